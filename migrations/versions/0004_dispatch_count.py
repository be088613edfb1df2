"""How many times each job was published, so republishing backs off.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("provisioning_jobs") as batch:
        batch.add_column(sa.Column("dispatch_count", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("provisioning_jobs") as batch:
        batch.drop_column("dispatch_count")
