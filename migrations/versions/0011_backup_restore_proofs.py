"""Restores and restore drills: when a backup last restored into a site that answered, and when
and why a drill last failed to restore it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("site_backups") as batch:
        batch.add_column(sa.Column("restore_proven_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("restore_failed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("restore_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("site_backups") as batch:
        batch.drop_column("restore_error")
        batch.drop_column("restore_failed_at")
        batch.drop_column("restore_proven_at")
