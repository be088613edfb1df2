"""The steps of backup and restore jobs that are the platform's own: checking the files a backup
step produced, copying them offsite, keeping only what the retention policy keeps (both copies),
checking a backup before it is restored (fetching it from offsite when no good copy is here), and
recording that it restored."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Mapping

from sqlalchemy.orm import Session, sessionmaker

from provisioning.backups.book import BACKUP_ID, BackupBook, BackupInvalid, Retention
from provisioning.backups.offsite import OffsiteError, OffsiteStore, copy_offsite, local_copy
from provisioning.backups.proofs import RestoreProofs
from provisioning.errors import BackupUnrestorable, StepFailed


class BackupSteps:
    """Runs the platform's steps (``Step.by_platform``) of one job, each in a short transaction."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        retention: Retention,
        offsite: OffsiteStore | None = None,
        backup_root: Path = Path("var/backups"),
    ):
        self.sessions = sessions
        self.retention = retention
        self.offsite = offsite
        self.backup_root = backup_root

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
            if step == "copy_offsite":
                return copy_offsite(session, self.offsite, backup)
            if step == "record_backup":
                pruned = book.prune(self.retention, tenant_id, self.offsite)
                return f"backup {backup.id} recorded; {len(pruned)} older backup(s) pruned by retention"
        raise ValueError(f"{step} is not a step of the platform")

    def check_backup(self, session: Session, tenant_id: uuid.UUID, backup_id: uuid.UUID) -> str:
        """The backup a restore uses is still completed, and its files are still what was written:
        retention or a person may have deleted them since it was asked for. When none good is on
        this server, its offsite copy is fetched and checked; a store that does not answer fails
        the step without blaming the backup (a retry checks again)."""
        backup = RestoreProofs(session).to_restore(tenant_id, backup_id)
        try:
            copy = local_copy(backup, self.backup_root, self.offsite)
        except BackupInvalid as invalid:
            raise BackupUnrestorable(f"backup {backup_id} cannot be restored: {invalid}") from None
        except OffsiteError as error:
            raise StepFailed(f"backup {backup_id}: {error}") from None
        how = "fetched from its offsite copy and checked" if copy.fetched else "checked"
        return f"backup {backup_id} of {backup.created_at:%Y-%m-%d %H:%M} UTC: {len(copy.files)} file(s) {how}"

    @staticmethod
    def prove_backup(session: Session, tenant_id: uuid.UUID, backup_id: uuid.UUID) -> str:
        RestoreProofs(session).prove(tenant_id, backup_id)
        return f"backup {backup_id} is proven to restore"
