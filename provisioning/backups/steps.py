"""The steps of backup and restore jobs that are the platform's own: checking the files a backup
step produced, keeping only what the retention policy keeps, checking a backup before it is
restored, and recording that it restored."""

from __future__ import annotations

import uuid
from typing import Mapping

from sqlalchemy.orm import Session, sessionmaker

from provisioning.backups.book import BACKUP_ID, BackupBook, BackupInvalid, Retention, verify
from provisioning.backups.proofs import RestoreProofs
from provisioning.errors import BackupUnrestorable, StepFailed


class BackupSteps:
    """Runs the platform's steps (``Step.by_platform``) of one job, each in a short transaction."""

    def __init__(self, sessions: sessionmaker[Session], retention: Retention):
        self.sessions = sessions
        self.retention = retention

    def run(self, step: str, job_id: uuid.UUID, tenant_id: uuid.UUID, options: Mapping[str, object]) -> str:
        with self.sessions() as session:
            if step in ("check_backup", "prove_backup"):
                return getattr(self, step)(session, tenant_id, uuid.UUID(str(options[BACKUP_ID])))
            book = BackupBook(session)
            backup = book.of_job(job_id)
            if backup is None:
                raise StepFailed("the backup step reported no backup files")
            if step == "verify_backup":
                try:
                    book.verify(backup)
                except BackupInvalid as invalid:
                    raise StepFailed(f"the backup is not usable: {invalid}") from None
                return f"backup {backup.id}: {len(backup.files)} file(s), {backup.size} bytes, sizes, sha256 and dump checked"
            if step == "record_backup":
                pruned = book.prune(self.retention, tenant_id)
                return f"backup {backup.id} recorded; {len(pruned)} older backup(s) pruned by retention"
        raise ValueError(f"{step} is not a step of the platform")

    @staticmethod
    def check_backup(session: Session, tenant_id: uuid.UUID, backup_id: uuid.UUID) -> str:
        """The backup a restore uses is still completed, and its files are still what was written:
        retention or a person may have deleted them since it was asked for."""
        backup = RestoreProofs(session).to_restore(tenant_id, backup_id)
        try:
            verify(backup.files)
        except BackupInvalid as invalid:
            raise BackupUnrestorable(f"backup {backup_id} cannot be restored: {invalid}") from None
        return f"backup {backup_id} of {backup.created_at:%Y-%m-%d %H:%M} UTC: {len(backup.files)} file(s) checked"

    @staticmethod
    def prove_backup(session: Session, tenant_id: uuid.UUID, backup_id: uuid.UUID) -> str:
        RestoreProofs(session).prove(tenant_id, backup_id)
        return f"backup {backup_id} is proven to restore"
