"""Offsite backups: where each backup's copy in S3-compatible storage is, when it was copied and
checked, when it was deleted, and the last copy's or delete's failure.

Its revision id is unique on its own (not a bare number), so that putting it after another
0012 is a change of ``down_revision`` alone.

Revision ID: 0012_offsite_backups
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_offsite_backups"
down_revision = "0011"
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
