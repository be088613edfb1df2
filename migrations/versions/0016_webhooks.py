"""Webhooks: endpoints, their deliveries and attempts, and the outboxes they are fanned out from.

A trigger on ``tenants`` writes each status change into ``tenant_events`` in the transaction of
the change, since several statements change a tenant's status (a move's, a claim's, the
records'); ``job_events.webhooks_at`` marks the job events already fanned out. The job events
recorded before this revision are marked, so no history is sent to the first endpoints.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

NOT_FANNED_OUT_JOB_EVENT = "status IS NOT NULL AND webhooks_at IS NULL"
NOT_FANNED_OUT = "webhooks_at IS NULL"
PENDING = "status = 'pending'"
DELIVERY_STATUSES = ("pending", "delivered", "failed")
EVENT_TYPES = (
    "job.created", "job.started", "job.completed", "job.failed", "job.cancelled",
    "backup.completed", "tenant.status_changed", "webhook.endpoint_disabled",
)  # fmt: skip

POSTGRESQL_TRIGGER = (
    """
CREATE FUNCTION record_tenant_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO tenant_events (tenant_id, previous_status, status, created_at) VALUES (NEW.id, OLD.status, NEW.status, now());
  RETURN NULL;
END
$$
""",
    "CREATE TRIGGER tenants_status_changed AFTER UPDATE OF status ON tenants FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION record_tenant_status()",
)
# In the text format SQLAlchemy writes SQLite's timestamps in (in UTC; fractions are optional).
SQLITE_TRIGGER = (
    "CREATE TRIGGER tenants_status_changed AFTER UPDATE OF status ON tenants WHEN OLD.status IS NOT NEW.status "
    "BEGIN INSERT INTO tenant_events (tenant_id, previous_status, status, created_at) "
    "VALUES (NEW.id, OLD.status, NEW.status, strftime('%Y-%m-%d %H:%M:%S', 'now')); END",
)


def _timestamp(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("previous_secret_encrypted", sa.Text(), nullable=True),
        _timestamp("previous_secret_expires_at"),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _timestamp("disabled_at"),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        _timestamp("failing_since"),
        sa.Column("created_by_id", sa.Uuid(), nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_endpoints_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_webhook_endpoints_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(op.f("ix_webhook_endpoints_tenant_id"), "webhook_endpoints", ["tenant_id"], unique=False)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.Enum(*EVENT_TYPES, name="eventtype", native_enum=False, length=40), nullable=False),
        sa.Column("event_key", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.Enum(*DELIVERY_STATUSES, name="deliverystatus", native_enum=False, length=20), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        _timestamp("next_attempt_at"),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("delivered_at"),
        sa.ForeignKeyConstraint(
            ["endpoint_id"], ["webhook_endpoints.id"], name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("endpoint_id", "event_key", name=op.f("uq_webhook_deliveries_endpoint_id")),
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint_created",
        "webhook_deliveries",
        ["endpoint_id", sa.text("created_at DESC"), sa.text("id DESC")],
        unique=False,
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        _timestamp("attempted_at", nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"], ["webhook_deliveries.id"], name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index(op.f("ix_webhook_attempts_delivery_id"), "webhook_attempts", ["delivery_id"], unique=False)
    op.create_table(
        "tenant_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("previous_status", sa.String(length=20), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("webhooks_at"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_events_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_events")),
    )
    op.create_index(
        "ix_tenant_events_not_fanned_out", "tenant_events", ["id"],
        postgresql_where=sa.text(NOT_FANNED_OUT), sqlite_where=sa.text(NOT_FANNED_OUT),
    )  # fmt: skip
    # In place, not by batch's copy of the table (SQLite): nothing of the table changes but a column.
    op.add_column("job_events", _timestamp("webhooks_at"))
    op.execute(sa.text("UPDATE job_events SET webhooks_at = created_at WHERE status IS NOT NULL"))
    op.create_index(
        "ix_job_events_not_fanned_out", "job_events", ["id"],
        postgresql_where=sa.text(NOT_FANNED_OUT_JOB_EVENT), sqlite_where=sa.text(NOT_FANNED_OUT_JOB_EVENT),
    )  # fmt: skip
    for statement in POSTGRESQL_TRIGGER if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGER:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER tenants_status_changed ON tenants")
        op.execute("DROP FUNCTION record_tenant_status()")
    else:
        op.execute("DROP TRIGGER tenants_status_changed")
    op.drop_index("ix_job_events_not_fanned_out", table_name="job_events")
    op.drop_column("job_events", "webhooks_at")
    op.drop_table("tenant_events")
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
