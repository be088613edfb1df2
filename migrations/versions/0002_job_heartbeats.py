"""Job heartbeats, and an index over active jobs for the sweeper.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTIVE = sa.text("status IN ('pending', 'running', 'cancelling')")


def upgrade() -> None:
    with op.batch_alter_table("provisioning_jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_provisioning_jobs_active", "provisioning_jobs", ["status"], postgresql_where=ACTIVE, sqlite_where=ACTIVE)


def downgrade() -> None:
    op.drop_index("ix_provisioning_jobs_active", table_name="provisioning_jobs")
    with op.batch_alter_table("provisioning_jobs") as batch:
        batch.drop_column("heartbeat_at")
