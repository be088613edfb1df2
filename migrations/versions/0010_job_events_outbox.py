"""Job events as the outbox of their announcements: the status a change moved the job to, and
when the relay published it, so no announcement is lost with the process that made the change.

Events recorded before this revision have no status and are never announced (the old
publisher sent them, or lost them, at the time).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UNANNOUNCED = "status IS NOT NULL AND announced_at IS NULL"
JOB_STATUSES = ("pending", "running", "cancelling", "completed", "failed", "cancelled")


def upgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(
            sa.Column("status", sa.Enum(*JOB_STATUSES, name="jobstatus", native_enum=False, length=20), nullable=True)
        )
        batch.add_column(sa.Column("announced_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_job_events_unannounced",
        "job_events",
        ["id"],
        postgresql_where=sa.text(UNANNOUNCED),
        sqlite_where=sa.text(UNANNOUNCED),
    )


def downgrade() -> None:
    op.drop_index("ix_job_events_unannounced", table_name="job_events")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_column("announced_at")
        batch.drop_column("status")
