"""Scoped tokens and disabled users: what each token may do (``scopes``; NULL for a token made
before scopes, which may do what its user's role allows), the tenant a token is bound to (NULL:
any of its user's tenants), and when a user was disabled (their tokens are revoked with them).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("scopes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("tenant_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(op.f("fk_api_tokens_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"], ondelete="CASCADE")
        batch.create_index(op.f("ix_api_tokens_tenant_id"), ["tenant_id"], unique=False)
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("disabled_at")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index(op.f("ix_api_tokens_tenant_id"))
        batch.drop_constraint(op.f("fk_api_tokens_tenant_id_tenants"), type_="foreignkey")
        batch.drop_column("tenant_id")
        batch.drop_column("scopes")
