"""Offsite backups: where each backup's copy in S3-compatible storage is, when it was copied and
checked, when it was deleted, and the last copy's or delete's failure.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("site_backups") as batch:
        batch.add_column(sa.Column("offsite_bucket", sa.String(length=63), nullable=True))
        batch.add_column(sa.Column("offsite_key", sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column("offsite_copied_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("offsite_deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("offsite_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("site_backups") as batch:
        batch.drop_column("offsite_error")
        batch.drop_column("offsite_deleted_at")
        batch.drop_column("offsite_copied_at")
        batch.drop_column("offsite_key")
        batch.drop_column("offsite_bucket")
