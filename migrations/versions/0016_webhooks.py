"""Webhooks: endpoints, their deliveries and attempts, and the outbox they are fanned out from.

Triggers write ``webhook_outbox`` in the transaction of each change: one on ``tenants`` for a
status change (several statements change a tenant's status: a move's, a claim's, the records'),
one on ``job_events`` for each event that changed a job's status. Events recorded before this
revision are not copied, so no history is sent to the first endpoints.

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

PENDING = "status = 'pending'"
DELIVERY_STATUSES = ("pending", "delivered", "failed")
EVENT_TYPES = (
    "job.created", "job.started", "job.completed", "job.failed", "job.cancelled",
    "backup.completed", "tenant.status_changed", "webhook.endpoint_disabled",
)  # fmt: skip

POSTGRESQL_TRIGGERS = (
    """
CREATE FUNCTION outbox_tenant_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO webhook_outbox (tenant_id, previous_status, status, created_at) VALUES (NEW.id, OLD.status, NEW.status, now());
  RETURN NULL;
END
$$
""",
    "CREATE TRIGGER tenants_to_webhooks AFTER UPDATE OF status ON tenants FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION outbox_tenant_status()",
    """
CREATE FUNCTION outbox_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO webhook_outbox (job_event_id, created_at) VALUES (NEW.id, NEW.created_at);
  RETURN NULL;
END
$$
""",
    "CREATE TRIGGER job_events_to_webhooks AFTER INSERT ON job_events FOR EACH ROW "
    "WHEN (NEW.status IS NOT NULL) EXECUTE FUNCTION outbox_job_event()",
)
# A tenant's change is stamped in the text form SQLAlchemy writes SQLite's timestamps in (UTC; fractions optional).
SQLITE_TRIGGERS = (
    "CREATE TRIGGER tenants_to_webhooks AFTER UPDATE OF status ON tenants WHEN OLD.status IS NOT NEW.status "
    "BEGIN INSERT INTO webhook_outbox (tenant_id, previous_status, status, created_at) "
    "VALUES (NEW.id, OLD.status, NEW.status, strftime('%Y-%m-%d %H:%M:%S', 'now')); END",
    "CREATE TRIGGER job_events_to_webhooks AFTER INSERT ON job_events WHEN NEW.status IS NOT NULL "
    "BEGIN INSERT INTO webhook_outbox (job_event_id, created_at) VALUES (NEW.id, NEW.created_at); END",
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
        "webhook_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("previous_status", sa.String(length=20), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=True),
        _timestamp("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["job_event_id"], ["job_events.id"], name=op.f("fk_webhook_outbox_job_event_id_job_events"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_outbox_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_outbox")),
    )
    for statement in POSTGRESQL_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for trigger, table in (("job_events_to_webhooks", "job_events"), ("tenants_to_webhooks", "tenants")):
        op.execute(f"DROP TRIGGER {trigger} ON {table}" if postgresql else f"DROP TRIGGER {trigger}")
    if postgresql:
        op.execute("DROP FUNCTION outbox_job_event()")
        op.execute("DROP FUNCTION outbox_tenant_status()")
    op.drop_table("webhook_outbox")
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
