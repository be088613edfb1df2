"""Whether a backup restores: a backup counts once it has been restored into a site that answered.

Restores and restore drills record it on the backup (``restore_proven_at``); a drill or a
restore that found the backup unusable records when and why (``restore_failed_at``,
``restore_error``), for the metrics and ``doctor`` to report until a later one proves it again.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from provisioning.enums import BackupStatus
from provisioning.errors import Conflict, NotFound, StepFailed
from provisioning.models import SiteBackup
from provisioning.platform.db import utcnow


class RestoreProofs:
    """Reads and records restore proofs on one caller-owned session; it commits its writes."""

    def __init__(self, session: Session):
        self.session = session

    def restorable(self, tenant_id: uuid.UUID, backup_id: uuid.UUID) -> SiteBackup:
        """The tenant's backup ``backup_id``, if it is completed; locked (for share) until the caller's
        transaction ends, so retention cannot prune it before the restore that asks for it is on
        record (``BackupBook.prune``).

        Raises:
            NotFound: the tenant has no such backup (another tenant's looks the same).
            Conflict: the backup is not completed (failed, pruned, or still being made).
        """
        backup = self.session.get(SiteBackup, backup_id, with_for_update={"read": True}, populate_existing=True)
        if backup is None or backup.tenant_id != tenant_id:
            raise NotFound(f"backup {backup_id} not found")
        if backup.status != BackupStatus.COMPLETED:
            raise Conflict(f"backup {backup_id} is {backup.status.value}: only a completed backup can be restored")
        return backup

    def to_restore(self, tenant_id: uuid.UUID, backup_id: uuid.UUID) -> SiteBackup:
        """``restorable``, as a running job's step asks it: retention or a person may have
        removed the backup since the job was asked for.

        Raises:
            StepFailed: the backup is gone or not completed; the message says which.
        """
        try:
            return self.restorable(tenant_id, backup_id)
        except (NotFound, Conflict) as gone:
            raise StepFailed(str(gone)) from None

    def newest(self, tenant_id: uuid.UUID) -> SiteBackup | None:
        """The tenant's newest completed backup."""
        return self.session.scalars(
            select(SiteBackup)
            .where(SiteBackup.tenant_id == tenant_id, SiteBackup.status == BackupStatus.COMPLETED)
            .order_by(SiteBackup.created_at.desc(), SiteBackup.id.desc())
        ).first()

    def prove(self, tenant_id: uuid.UUID, backup_id: uuid.UUID) -> None:
        self._record(tenant_id, backup_id, restore_proven_at=utcnow())

    def disprove(self, tenant_id: uuid.UUID, backup_id: uuid.UUID, error: str) -> None:
        self._record(tenant_id, backup_id, restore_failed_at=utcnow(), restore_error=error)

    def disproven(self) -> Sequence[SiteBackup]:
        """The completed backups whose last restore failed (no later one proved them), newest failure first."""
        return self.session.scalars(
            select(SiteBackup)
            .where(SiteBackup.status == BackupStatus.COMPLETED, self._last_failed())
            .order_by(SiteBackup.restore_failed_at.desc())
        ).all()

    def counts(self) -> tuple[int, int]:
        """How many completed backups are proven to restore, and how many failed their last restore."""
        completed = SiteBackup.status == BackupStatus.COMPLETED
        proven = func.count().filter(SiteBackup.restore_proven_at.is_not(None), ~self._last_failed())
        failing = func.count().filter(self._last_failed())
        return tuple(self.session.execute(select(proven, failing).where(completed)).one())

    def newest_proof(self) -> datetime | None:
        return self.session.scalar(select(func.max(SiteBackup.restore_proven_at)))

    @staticmethod
    def _last_failed():
        return SiteBackup.restore_failed_at.is_not(None) & (
            SiteBackup.restore_proven_at.is_(None) | (SiteBackup.restore_proven_at < SiteBackup.restore_failed_at)
        )

    def _record(self, tenant_id: uuid.UUID, backup_id: uuid.UUID, **values) -> None:
        self.session.execute(
            update(SiteBackup).where(SiteBackup.id == backup_id, SiteBackup.tenant_id == tenant_id).values(**values)
        )
        self.session.commit()
