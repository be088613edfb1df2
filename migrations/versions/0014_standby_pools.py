"""Standby pools: sites made ahead of time on each server, for a tenant's create_site to claim.

Each server says how many ready standby sites it keeps and how many one pool job makes. A
standby site takes room on its server while it is being made, ready or waiting to be dropped: a
trigger counts it in ``servers.site_count`` as the tenants' trigger counts tenants. The pool's
jobs belong to a tenant row of its own (status ``pool``) placed on its server, so they run on
its queue like any job of that server; the tenants' trigger no longer counts that row as a site.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

STANDBY_STATUS = sa.Enum(
    "making", "ready", "reserved", "claiming", "claimed", "discarded", "dropped",
    name="standbystatus", native_enum=False, length=20,
)  # fmt: skip
# The statuses in which a standby site takes room on its server (``StandbyStatus``).
COUNTED = "('making', 'ready', 'discarded')"

# The tenants' count of migration 0012, leaving out the pool's own row (its status never changes).
TENANT_COUNT = """
CREATE OR REPLACE FUNCTION count_server_sites() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status <> 'pool' THEN
    UPDATE servers SET site_count = site_count - 1 WHERE id IN (OLD.server_id, OLD.target_server_id);
  END IF;
  IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.status <> 'pool' THEN
    UPDATE servers SET site_count = site_count + 1 WHERE id IN (NEW.server_id, NEW.target_server_id);
  END IF;
  RETURN NULL;
END
$$
"""
TENANT_COUNT_BEFORE = TENANT_COUNT.replace(" AND OLD.status <> 'pool'", "").replace(" AND NEW.status <> 'pool'", "")
_SQLITE_TENANT = "UPDATE servers SET site_count = site_count {sign} 1 WHERE id IN ({row}.server_id, {row}.target_server_id);"


def _sqlite_tenant_triggers(not_pool: bool) -> tuple[str, ...]:
    """Migration 0012's triggers; with ``not_pool``, none counts the pool's own row."""
    new, old = (f" WHEN {row}.status <> 'pool'" if not_pool else "" for row in ("NEW", "OLD"))
    moved = " AND NEW.status <> 'pool'" if not_pool else ""
    return (
        f"CREATE TRIGGER tenants_placed AFTER INSERT ON tenants{new} BEGIN {_SQLITE_TENANT.format(sign='+', row='NEW')} END",
        f"CREATE TRIGGER tenants_unplaced AFTER DELETE ON tenants{old} BEGIN {_SQLITE_TENANT.format(sign='-', row='OLD')} END",
        "CREATE TRIGGER tenants_moved AFTER UPDATE OF server_id, target_server_id ON tenants "
        f"WHEN (OLD.server_id IS NOT NEW.server_id OR OLD.target_server_id IS NOT NEW.target_server_id){moved} "
        f"BEGIN {_SQLITE_TENANT.format(sign='-', row='OLD')} {_SQLITE_TENANT.format(sign='+', row='NEW')} END",
    )


STANDBY_COUNT = f"""
CREATE FUNCTION count_standby_sites() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status IN {COUNTED} THEN
    UPDATE servers SET site_count = site_count - 1 WHERE id = OLD.server_id;
  END IF;
  IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.status IN {COUNTED} THEN
    UPDATE servers SET site_count = site_count + 1 WHERE id = NEW.server_id;
  END IF;
  RETURN NULL;
END
$$
"""
POSTGRESQL_STANDBY_TRIGGERS = (
    "CREATE TRIGGER standby_sites_made AFTER INSERT OR DELETE ON standby_sites FOR EACH ROW "
    "EXECUTE FUNCTION count_standby_sites()",
    "CREATE TRIGGER standby_sites_changed AFTER UPDATE OF status ON standby_sites FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION count_standby_sites()",
)
SQLITE_STANDBY_TRIGGERS = (
    f"CREATE TRIGGER standby_sites_made AFTER INSERT ON standby_sites WHEN NEW.status IN {COUNTED} "
    "BEGIN UPDATE servers SET site_count = site_count + 1 WHERE id = NEW.server_id; END",
    f"CREATE TRIGGER standby_sites_gone AFTER DELETE ON standby_sites WHEN OLD.status IN {COUNTED} "
    "BEGIN UPDATE servers SET site_count = site_count - 1 WHERE id = OLD.server_id; END",
    "CREATE TRIGGER standby_sites_changed AFTER UPDATE OF status ON standby_sites "
    f"BEGIN UPDATE servers SET site_count = site_count - (OLD.status IN {COUNTED}) + (NEW.status IN {COUNTED}) "
    "WHERE id = NEW.server_id; END",
)
SQLITE_TENANT_TRIGGERS = ("tenants_moved", "tenants_unplaced", "tenants_placed")


def upgrade() -> None:
    # In place, not by batch's copy of the table: SQLite refuses that while triggers name it.
    op.add_column("servers", sa.Column("standby_pool_size", sa.Integer(), server_default="0", nullable=False))
    op.add_column("servers", sa.Column("standby_batch", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "standby_sites",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("server_id", sa.Uuid(), nullable=False),
        sa.Column("label", sa.String(length=63), nullable=False),
        sa.Column("status", STANDBY_STATUS, nullable=False),
        sa.Column("fingerprint", sa.String(length=500), nullable=True),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dropped_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["server_id"], ["servers.id"], name=op.f("fk_standby_sites_server_id_servers"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["provisioning_jobs.id"], name=op.f("fk_standby_sites_job_id_provisioning_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_standby_sites_tenant_id_tenants"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_standby_sites")),
        sa.UniqueConstraint("label", name=op.f("uq_standby_sites_label")),
    )
    op.create_index("ix_standby_sites_server_status", "standby_sites", ["server_id", "status"], unique=False)
    op.create_index(op.f("ix_standby_sites_job_id"), "standby_sites", ["job_id"], unique=False)
    op.create_index(op.f("ix_standby_sites_tenant_id"), "standby_sites", ["tenant_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(TENANT_COUNT)
        op.execute(STANDBY_COUNT)
        for trigger in POSTGRESQL_STANDBY_TRIGGERS:
            op.execute(trigger)
    else:
        _replace_sqlite_tenant_triggers(not_pool=True)
        for trigger in SQLITE_STANDBY_TRIGGERS:
            op.execute(trigger)


def _replace_sqlite_tenant_triggers(not_pool: bool) -> None:
    for trigger in SQLITE_TENANT_TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger}")
    for trigger in _sqlite_tenant_triggers(not_pool):
        op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER standby_sites_changed ON standby_sites")
        op.execute("DROP TRIGGER standby_sites_made ON standby_sites")
        op.execute("DROP FUNCTION count_standby_sites()")
        op.execute(TENANT_COUNT_BEFORE)
    else:
        for trigger in ("standby_sites_changed", "standby_sites_gone", "standby_sites_made"):
            op.execute(f"DROP TRIGGER {trigger}")
        _replace_sqlite_tenant_triggers(not_pool=False)
    op.drop_table("standby_sites")
    op.drop_column("servers", "standby_batch")
    op.drop_column("servers", "standby_pool_size")
