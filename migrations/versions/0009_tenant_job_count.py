"""Each tenant's number of jobs, kept by the database itself, so a page of jobs needs no count(*).

A trigger counts every insert and delete of a job, whichever code (or person) makes it, so the
count is exact without any caller having to remember it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

POSTGRESQL_FUNCTION = """
CREATE FUNCTION count_tenant_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE tenants SET job_count = job_count + 1 WHERE id = NEW.tenant_id;
  ELSE
    UPDATE tenants SET job_count = job_count - 1 WHERE id = OLD.tenant_id;
  END IF;
  RETURN NULL;
END
$$
"""
POSTGRESQL_TRIGGER = (
    "CREATE TRIGGER provisioning_jobs_counted AFTER INSERT OR DELETE ON provisioning_jobs "
    "FOR EACH ROW EXECUTE FUNCTION count_tenant_jobs()"
)
SQLITE_TRIGGERS = (
    "CREATE TRIGGER provisioning_jobs_counted AFTER INSERT ON provisioning_jobs "
    "BEGIN UPDATE tenants SET job_count = job_count + 1 WHERE id = NEW.tenant_id; END",
    "CREATE TRIGGER provisioning_jobs_uncounted AFTER DELETE ON provisioning_jobs "
    "BEGIN UPDATE tenants SET job_count = job_count - 1 WHERE id = OLD.tenant_id; END",
)


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("job_count", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE tenants SET job_count = (SELECT count(*) FROM provisioning_jobs WHERE provisioning_jobs.tenant_id = tenants.id)"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRESQL_FUNCTION)
        op.execute(POSTGRESQL_TRIGGER)
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER provisioning_jobs_counted ON provisioning_jobs")
        op.execute("DROP FUNCTION count_tenant_jobs()")
    else:
        op.execute("DROP TRIGGER provisioning_jobs_counted")
        op.execute("DROP TRIGGER provisioning_jobs_uncounted")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("job_count")
