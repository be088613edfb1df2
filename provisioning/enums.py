"""The enumerations stored in the database and shown by the API (values are lowercase)."""

import enum


class TenantStatus(str, enum.Enum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    RESTORING = "restoring"
    MOVING = "moving"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


class Role(str, enum.Enum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class JobType(str, enum.Enum):
    CREATE_SITE = "create_site"
    DELETE_SITE = "delete_site"
    BACKUP_SITE = "backup_site"
    RESTORE_SITE = "restore_site"
    RESTORE_DRILL = "restore_drill"
    MOVE_SITE = "move_site"


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


class BackupStatus(str, enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PRUNED = "pruned"


WRITER_ROLES = frozenset({Role.OWNER, Role.ADMIN})
