"""The enumerations stored in the database and shown by the API (values are lowercase)."""

import enum


class TenantStatus(str, enum.Enum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    RESTORING = "restoring"
    MOVING = "moving"
    # Closed by billing (an unpaid invoice, say): its site shows the maintenance page and its
    # scheduler is stopped; only backup_site, delete_site and unsuspend_site run (``jobs.workflows``).
    SUSPENDED = "suspended"
    # A suspend_site or unsuspend_site failed or was cut short half-way: the site may be half
    # closed. Either job (the failed one's retry) finishes it one way or the other.
    HALF_SUSPENDED = "half_suspended"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"
    # Not a customer: the holder of a bench server's standby pool, whose jobs make and drop its
    # standby sites (``servers.standby``). Never backed up, moved or given a site of its own.
    POOL = "pool"


class Role(str, enum.Enum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class Scope(str, enum.Enum):
    """What an API token may do (``accounts.scopes``): ``read`` the tenant's jobs and backups,
    ``write`` (ask for, retry and cancel jobs; manage a tenant's members and tokens), and
    ``platform``: the platform's own resources (servers, tenants, users), superusers only."""

    READ = "read"
    WRITE = "write"
    PLATFORM = "platform"


class JobType(str, enum.Enum):
    CREATE_SITE = "create_site"
    DELETE_SITE = "delete_site"
    BACKUP_SITE = "backup_site"
    RESTORE_SITE = "restore_site"
    RESTORE_DRILL = "restore_drill"
    MOVE_SITE = "move_site"
    REFILL_POOL = "refill_pool"
    SUSPEND_SITE = "suspend_site"
    UNSUSPEND_SITE = "unsuspend_site"


class JobStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class ServerStatus(str, enum.Enum):
    """A bench server's status: ``active`` takes new sites; ``draining`` keeps its sites and runs
    their jobs but takes no new ones; ``down`` holds its jobs until it is active again."""

    ACTIVE = "active"
    DRAINING = "draining"
    DOWN = "down"


class StandbyStatus(str, enum.Enum):
    """A standby site's life: ``making`` (a pool job is making it), ``ready``, ``reserved`` (for a
    tenant whose create_site is asked for), ``claiming`` (that create is renaming it), ``claimed``
    (it is the tenant's site now), ``discarded`` (stale, half made or a failed claim: to be
    dropped), ``dropped``. Making, ready and discarded ones take room on their server; a reserved or
    claimed one is counted as its tenant's site."""

    MAKING = "making"
    READY = "ready"
    RESERVED = "reserved"
    CLAIMING = "claiming"
    CLAIMED = "claimed"
    DISCARDED = "discarded"
    DROPPED = "dropped"


class BackupStatus(str, enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PRUNED = "pruned"


WRITER_ROLES = frozenset({Role.OWNER, Role.ADMIN})
# Billing's job types: only platform operators ask for them (``jobs.workflows`` says what they leave).
SUSPENSIONS = frozenset({JobType.SUSPEND_SITE, JobType.UNSUSPEND_SITE})
