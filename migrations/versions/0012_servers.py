"""Bench servers: the registry, each tenant's server, and the count of sites on each.

An existing deployment has one bench server: this makes it, as ``default``, whose job queue is
the one the deployment already uses (PROVISIONING_QUEUE_NAME, see ``Settings.queue_of_server``),
and places every tenant that has or is getting a site on it. Nothing about the deployment's
configuration changes.

A trigger keeps ``servers.site_count`` (the tenants placed on each server, and those being moved
to it: a moving site takes room on both) exact whichever code places, moves or releases a tenant,
so placement compares it with ``capacity`` without counting.

A job that runs on several servers (a move) is handed from one server's worker to another's
between two steps: ``handed_to`` names the server whose worker is to take it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

from provisioning.platform.settings import DEFAULT_SERVER_NAME

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SERVER_STATUS = sa.Enum("active", "draining", "down", name="serverstatus", native_enum=False, length=20)
# The first server holds every site the deployment has, and room for this many at least.
FIRST_SERVER_CAPACITY = 100

# Each of a tenant's two server columns counts on its server: where it is, where it is moving to.
POSTGRESQL_FUNCTION = """
CREATE FUNCTION count_server_sites() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    UPDATE servers SET site_count = site_count - 1 WHERE id IN (OLD.server_id, OLD.target_server_id);
  END IF;
  IF TG_OP IN ('UPDATE', 'INSERT') THEN
    UPDATE servers SET site_count = site_count + 1 WHERE id IN (NEW.server_id, NEW.target_server_id);
  END IF;
  RETURN NULL;
END
$$
"""
POSTGRESQL_TRIGGERS = (
    "CREATE TRIGGER tenants_placed AFTER INSERT OR DELETE ON tenants FOR EACH ROW EXECUTE FUNCTION count_server_sites()",
    "CREATE TRIGGER tenants_moved AFTER UPDATE OF server_id, target_server_id ON tenants FOR EACH ROW "
    "WHEN (OLD.server_id IS DISTINCT FROM NEW.server_id OR OLD.target_server_id IS DISTINCT FROM NEW.target_server_id) "
    "EXECUTE FUNCTION count_server_sites()",
)
_SQLITE_COUNT = "UPDATE servers SET site_count = site_count {sign} 1 WHERE id IN ({row}.server_id, {row}.target_server_id);"
SQLITE_TRIGGERS = (
    f"CREATE TRIGGER tenants_placed AFTER INSERT ON tenants BEGIN {_SQLITE_COUNT.format(sign='+', row='NEW')} END",
    f"CREATE TRIGGER tenants_unplaced AFTER DELETE ON tenants BEGIN {_SQLITE_COUNT.format(sign='-', row='OLD')} END",
    "CREATE TRIGGER tenants_moved AFTER UPDATE OF server_id, target_server_id ON tenants "
    "WHEN OLD.server_id IS NOT NEW.server_id OR OLD.target_server_id IS NOT NEW.target_server_id "
    f"BEGIN {_SQLITE_COUNT.format(sign='-', row='OLD')} {_SQLITE_COUNT.format(sign='+', row='NEW')} END",
)


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("status", SERVER_STATUS, nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), server_default="{}", nullable=False),
        sa.Column("site_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_servers")),
        sa.UniqueConstraint("name", name=op.f("uq_servers_name")),
    )
    # Added in place, not by batch's copy of the table, which SQLite refuses while the trigger of
    # migration 0009 names the table; SQLite adds a column's reference only with the column.
    for column in ("server_id", "target_server_id"):
        if op.get_bind().dialect.name == "postgresql":
            op.add_column("tenants", sa.Column(column, sa.Uuid(), nullable=True))
            op.create_foreign_key(
                op.f(f"fk_tenants_{column}_servers"), "tenants", "servers", [column], ["id"], ondelete="RESTRICT"
            )
        else:
            op.execute(f"ALTER TABLE tenants ADD COLUMN {column} CHAR(32) REFERENCES servers (id) ON DELETE RESTRICT")
        op.create_index(op.f(f"ix_tenants_{column}"), "tenants", [column], unique=False)
    with op.batch_alter_table("provisioning_jobs") as batch:
        batch.add_column(sa.Column("handed_to", sa.String(length=63), nullable=True))
    _make_the_first_server()
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRESQL_FUNCTION)
        for trigger in POSTGRESQL_TRIGGERS:
            op.execute(trigger)
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)


def _make_the_first_server() -> None:
    """The deployment's one server, holding every tenant that is not deleted (a pending one too:
    its create may be under way)."""
    server_id = uuid.uuid4()
    now = datetime.now(timezone.utc)
    servers = sa.table(
        "servers",
        sa.column("id", sa.Uuid()), sa.column("name", sa.String()),
        sa.column("status", sa.String()), sa.column("capacity", sa.Integer()), sa.column("labels", sa.JSON()),
        sa.column("site_count", sa.Integer()), sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )  # fmt: skip
    tenants = sa.table("tenants", sa.column("server_id", sa.Uuid()), sa.column("status", sa.String()))
    bind = op.get_bind()
    sites = bind.scalar(sa.select(sa.func.count()).select_from(tenants).where(tenants.c.status != "deleted"))
    bind.execute(
        servers.insert().values(
            id=server_id, name=DEFAULT_SERVER_NAME, status="active", capacity=max(FIRST_SERVER_CAPACITY, sites),
            labels={}, site_count=sites, created_at=now, updated_at=now,
        )
    )  # fmt: skip
    bind.execute(tenants.update().where(tenants.c.status != "deleted").values(server_id=server_id))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER tenants_moved ON tenants")
        op.execute("DROP TRIGGER tenants_placed ON tenants")
        op.execute("DROP FUNCTION count_server_sites()")
    else:
        for trigger in ("tenants_moved", "tenants_unplaced", "tenants_placed"):
            op.execute(f"DROP TRIGGER {trigger}")
    with op.batch_alter_table("provisioning_jobs") as batch:
        batch.drop_column("handed_to")
    for column in ("target_server_id", "server_id"):
        op.drop_index(op.f(f"ix_tenants_{column}"), table_name="tenants")
        if op.get_bind().dialect.name == "postgresql":
            op.drop_constraint(op.f(f"fk_tenants_{column}_servers"), "tenants", type_="foreignkey")
        op.drop_column("tenants", column)
    op.drop_table("servers")
