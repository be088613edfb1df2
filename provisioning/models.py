"""The tables: bench servers, tenants, users and their memberships, API tokens, jobs and job steps.

Models never commit; the service and the callers own the transactions.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from provisioning.enums import BackupStatus, JobStatus, JobType, Role, ServerStatus, StandbyStatus, StepStatus, TenantStatus
from provisioning.platform.db import Base, UTCDateTime, utcnow

ACTIVE_JOB_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.CANCELLING)
_ACTIVE_JOB_SQL = "status IN ({})".format(", ".join(f"'{status.value}'" for status in ACTIVE_JOB_STATUSES))


def _enum_column(enum_class: type[enum.Enum], length: int = 20) -> Enum:
    """Stored as its lowercase value in a VARCHAR, so adding a member needs no type migration."""
    return Enum(
        enum_class,
        native_enum=False,
        length=length,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Server(Base):
    """A bench server: the sites placed on it. Its workers take its jobs from the queue its name
    gives (``Settings.queue_of_server``).

    ``site_count`` is how many tenants are placed on it or being moved to it, and how many of its
    standby sites take room (``StandbyStatus``), kept by triggers on ``tenants`` and ``standby_sites``
    (migrations 0012 and 0014), so placement can compare it with ``capacity`` without counting rows.

    ``standby_pool_size`` is how many ready standby sites it keeps (0: no pool), ``standby_batch``
    how many one pool job makes at most (``servers.standby``).
    """

    __tablename__ = "servers"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    status: Mapped[ServerStatus] = mapped_column(_enum_column(ServerStatus), default=ServerStatus.ACTIVE)
    capacity: Mapped[int] = mapped_column(Integer)
    # Free-form placement labels, such as {"region": "eu", "plan": "large"}.
    labels: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")
    site_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    standby_pool_size: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    standby_batch: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class StandbySite(Base):
    """A site made ahead of time on a server, under a placeholder name (``label``), for a tenant's
    create_site to claim and rename (``servers.standby``). ``fingerprint`` says what it was made
    with (SITE_APPS, the bench's app versions, the site domain): one that differs from the bench's
    now is stale, never handed out. ``job_id`` is the job making, claiming or having claimed it;
    ``tenant_id`` the tenant it is reserved for or was claimed by."""

    __tablename__ = "standby_sites"
    __table_args__ = (Index("ix_standby_sites_server_status", "server_id", "status"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(63), unique=True)
    status: Mapped[StandbyStatus] = mapped_column(_enum_column(StandbyStatus), default=StandbyStatus.MAKING)
    fingerprint: Mapped[str | None] = mapped_column(String(500))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("provisioning_jobs.id", ondelete="SET NULL"), index=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="SET NULL"), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dropped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Tenant(Base):
    """One customer and its one ERPNext site, on the server it is placed on (None: not placed
    yet, or its site was deleted)."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[TenantStatus] = mapped_column(_enum_column(TenantStatus), default=TenantStatus.PENDING)
    # The site's Administrator password, encrypted with SITE_CREDENTIALS_KEY; shown to the owner once.
    admin_password_encrypted: Mapped[str | None] = mapped_column(Text)
    admin_password_revealed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # How many jobs it has ever had; kept by a trigger on provisioning_jobs (migration 0009).
    job_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    server_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("servers.id", ondelete="RESTRICT"), index=True)
    # The server a move_site job is moving the site to; it has room kept for it until the move ends.
    target_server_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("servers.id", ondelete="RESTRICT"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class User(Base):
    """A person or system that calls the API; a superuser is a platform operator. A disabled
    user's tokens were revoked as it was disabled, and it can be given no new one."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    is_superuser: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Membership(Base):
    """A user's role in one tenant."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "tenant_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    role: Mapped[Role] = mapped_column(_enum_column(Role))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, the token itself is shown once.

    ``scopes`` is what it may do (``accounts.scopes``), within what its user's role allows; NULL
    for a token made before scopes existed, which may do all its user's role allows. A token with
    a ``tenant_id`` acts for that tenant only (one a tenant's owner made); without, for any of its
    user's tenants."""

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    scopes: Mapped[list | None] = mapped_column(JSON)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


class ProvisioningJob(Base):
    """One create, delete or backup of a tenant's site; its status moves only through states.py."""

    __tablename__ = "provisioning_jobs"
    __table_args__ = (
        Index("ix_provisioning_jobs_tenant_created", "tenant_id", text("created_at DESC"), text("id DESC")),
        # The sweeper's questions: which pending jobs were never claimed, which running ones went quiet.
        Index(
            "ix_provisioning_jobs_active",
            "status",
            postgresql_where=text(_ACTIVE_JOB_SQL),
            sqlite_where=text(_ACTIVE_JOB_SQL),
        ),
        # One active job per tenant, enforced where no race can get past it.
        Index(
            "uq_provisioning_jobs_one_active_per_tenant",
            "tenant_id",
            unique=True,
            postgresql_where=text(_ACTIVE_JOB_SQL),
            sqlite_where=text(_ACTIVE_JOB_SQL),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_type: Mapped[JobType] = mapped_column(_enum_column(JobType))
    status: Mapped[JobStatus] = mapped_column(_enum_column(JobStatus), default=JobStatus.PENDING)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    requested_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    retry_of_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("provisioning_jobs.id", ondelete="SET NULL"))
    # A retry of a failed job starts at this step; the steps before it were done by the failed job.
    resume_from: Mapped[str | None] = mapped_column(String(64))
    # What the request asked for beyond the job type, such as {"skip_final_backup": true}.
    options: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")
    # The X-Request-ID of the request that asked for it: the key to its log lines, API to worker.
    request_id: Mapped[str | None] = mapped_column(String(128))
    worker: Mapped[str | None] = mapped_column(String(255))
    # A job that runs on several servers (a move), between two steps: the server whose worker is to
    # take it on. It is running then, held by no worker.
    handed_to: Mapped[str | None] = mapped_column(String(63))
    tenant_status_before: Mapped[TenantStatus | None] = mapped_column(_enum_column(TenantStatus))
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tenant: Mapped[Tenant] = relationship()


class AuditEntry(Base):
    """Who did what, when, from where: token, tenant and membership changes and job requests."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="SET NULL"), index=True)
    target: Mapped[str] = mapped_column(String(300), default="")
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    detail: Mapped[str] = mapped_column(Text, default="")


_UNANNOUNCED_EVENT_SQL = "status IS NOT NULL AND announced_at IS NULL"


class JobEvent(Base):
    """One thing that happened to a job, in order: who or what did it, and the detail.

    An event that changed the job's status carries that ``status``, and is the outbox of its
    announcement to other systems: written in the same transaction as the change, published
    by the event relay afterwards, which then sets ``announced_at`` (see provisioning/messaging/events.py).
    A trigger copies each into the webhooks' own outbox (``webhook_outbox``, migration 0016), so the
    webhooks' fan-out never holds a row the relay is to take.
    """

    __tablename__ = "job_events"
    __table_args__ = (
        Index("ix_job_events_job_id_id", "job_id", "id"),
        # What the relay has still to publish: small, whatever the size of the history.
        Index(
            "ix_job_events_unannounced",
            "id",
            postgresql_where=text(_UNANNOUNCED_EVENT_SQL),
            sqlite_where=text(_UNANNOUNCED_EVENT_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("provisioning_jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(300))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[JobStatus | None] = mapped_column(_enum_column(JobStatus))
    announced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key`` and the job its first request made, so a repeat makes no second one."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_fingerprint: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("provisioning_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

    # Also tells the unit of work to insert the job before the key that points at it.
    job: Mapped[ProvisioningJob] = relationship()


class JobStep(Base):
    """One named step of a job, so an operator can see where a job stopped and why."""

    __tablename__ = "job_steps"
    __table_args__ = (UniqueConstraint("job_id", "position"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("provisioning_jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[StepStatus] = mapped_column(_enum_column(StepStatus), default=StepStatus.PENDING)
    message: Mapped[str] = mapped_column(Text, default="")
    output: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SiteBackup(Base):
    """One backup of a tenant's site: its files with size and sha256 each, and whether it can be trusted.

    ``files`` is a list of ``{"kind", "path", "size", "sha256"}``; a backup is ``completed`` only
    once every file was checked. Pruning deletes the files and keeps the record, as ``pruned``.
    ``restore_proven_at`` is when it last restored into a site that then answered (a restore or a
    restore drill); ``restore_failed_at`` and ``restore_error`` say when and why one last failed to.

    Offsite (backups/offsite.py): ``offsite_bucket`` and ``offsite_key`` (the key prefix of its files)
    are written before the first upload, so objects a cut-short copy left are found and deleted
    too; ``offsite_copied_at`` is when every file was copied and checked; ``offsite_deleted_at``
    when its objects were deleted (pruned or discarded: until then the next prune tries again);
    ``offsite_error`` is the last copy's or delete's failure.
    """

    __tablename__ = "site_backups"
    __table_args__ = (Index("ix_site_backups_tenant_created", "tenant_id", text("created_at DESC"), text("id DESC")),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("provisioning_jobs.id", ondelete="SET NULL"), index=True)
    site: Mapped[str] = mapped_column(String(255))
    status: Mapped[BackupStatus] = mapped_column(_enum_column(BackupStatus), default=BackupStatus.RUNNING)
    files: Mapped[list] = mapped_column(JSON, default=list)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    restore_proven_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    restore_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    restore_error: Mapped[str | None] = mapped_column(Text)
    offsite_bucket: Mapped[str | None] = mapped_column(String(63))
    offsite_key: Mapped[str | None] = mapped_column(String(1024))
    offsite_copied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    offsite_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    offsite_error: Mapped[str | None] = mapped_column(Text)
