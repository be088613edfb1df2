"""Site backups, retries that resume at the failed step, job options, the site's admin password.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BACKUP_STATUS = sa.Enum("running", "completed", "failed", "pruned", name="backupstatus", native_enum=False, length=20)


def upgrade() -> None:
    op.create_table(
        "site_backups",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("site", sa.String(length=255), nullable=False),
        sa.Column("status", BACKUP_STATUS, nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["provisioning_jobs.id"], name=op.f("fk_site_backups_job_id_provisioning_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_site_backups_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_backups")),
    )
    op.create_index(op.f("ix_site_backups_job_id"), "site_backups", ["job_id"], unique=False)
    op.create_index(
        "ix_site_backups_tenant_created",
        "site_backups",
        ["tenant_id", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
        unique=False,
    )
    with op.batch_alter_table("provisioning_jobs") as batch:
        batch.add_column(sa.Column("resume_from", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("options", sa.JSON(), server_default="{}", nullable=False))
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("admin_password_encrypted", sa.Text(), nullable=True))
        batch.add_column(sa.Column("admin_password_revealed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("admin_password_revealed_at")
        batch.drop_column("admin_password_encrypted")
    with op.batch_alter_table("provisioning_jobs") as batch:
        batch.drop_column("options")
        batch.drop_column("resume_from")
    op.drop_index("ix_site_backups_tenant_created", table_name="site_backups")
    op.drop_index(op.f("ix_site_backups_job_id"), table_name="site_backups")
    op.drop_table("site_backups")
