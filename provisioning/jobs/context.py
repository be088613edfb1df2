"""The driver's view of the job whose step it runs: the StepContext a worker hands to drivers."""

from __future__ import annotations

import copy as _copy
import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

from sqlalchemy.orm import Session, sessionmaker

from provisioning.backups.book import (
    BACKUP_ID,
    PRIVATE_DIRECTORY_MODE,
    BackupBook,
    BackupInvalid,
    files_of,
    make_private,
    private_directory,
)
from provisioning.backups.offsite import OffsiteError, OffsiteStore, local_copy
from provisioning.backups.proofs import RestoreProofs
from provisioning.enums import BackupStatus, JobType
from provisioning.errors import StepFailed
from provisioning.jobs.records import Claim
from provisioning.jobs.standby_book import JobStandbyBook
from provisioning.jobs.step_interruptions import StopFlags
from provisioning.platform.identifiers import SLUG
from provisioning.sites.credentials import CredentialsUnavailable, SiteCredentials
from provisioning.sites.drivers.base import BackupFile


class JobContext:
    """Each write is a short transaction of its own, so what a step produced is on record even
    if the step fails right after: a retry then finds the backup files it must discard. The
    site's admin password was stored with the claim (see ``JobExecution.start_job``).

    Whether to stop is a read of the job's StopFlags, never a query: a driver asks it every
    fraction of a second, and the heartbeat and the step writes are what read the database.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        claim: Claim,
        flags: StopFlags,
        credentials: SiteCredentials,
        backup_root: Path,
        reached: list[str],
        offsite: OffsiteStore | None = None,
    ):
        job = claim.job
        self.job_id = job.id
        self.job_type = job.job_type
        self.tenant_slug = claim.tenant_slug
        self.options = dict(job.options or {})
        self._tenant_id = job.tenant_id
        self._admin_password_encrypted = claim.admin_password_encrypted
        self._sessions = sessions
        self._flags = flags
        self._stops_for_a_cancel = True
        self._credentials = credentials
        self._backup_root = backup_root
        self._reached = reached  # the runner's own list, kept up to date as steps start
        self._offsite = offsite
        self.standby = JobStandbyBook(sessions, job.id, job.tenant_id, self.options)

    def should_stop(self) -> bool:
        return self._flags.should_stop(self._stops_for_a_cancel)

    def must_stop(self) -> str | None:
        return self._flags.must_stop(self._stops_for_a_cancel)

    def past_cancels(self) -> "JobContext":
        """The same context for the point of no return: neither a cancel nor its grace period stops
        it, only a job taken away or a worker stopping."""
        return self._with(_stops_for_a_cancel=False)

    def unstoppable(self) -> "JobContext":
        """The same context for work that must finish even though the job is stopping: a cancel's clean-up."""
        return self._with(_flags=StopFlags())  # flags nobody sets

    def _with(self, **changes) -> "JobContext":
        copy = _copy.copy(self)
        copy.__dict__.update(changes)
        return copy

    def reached(self, step: str) -> bool:
        return step in self._reached

    def admin_password(self) -> str:
        """The site's admin password, as the claim stored it: a retry's earlier attempt's, or a new one."""
        try:
            if self._admin_password_encrypted is None:
                self._credentials.check()  # without a key the claim stored none: the reason to give
                raise StepFailed(f"no admin password was stored when this {self.job_type.value} job started")
            return self._credentials.decrypt(self._admin_password_encrypted)
        except CredentialsUnavailable as unavailable:
            raise StepFailed(str(unavailable)) from None

    @property
    def backup_root(self) -> Path:
        return self._backup_root

    def backup_directory(self, owner: tuple[int, int] | None = None) -> Path:
        """``BACKUP_PATH/<slug>/<job id>/``, each folder below BACKUP_PATH private to the service's
        user, or handed to ``owner`` (uid, gid): the user bench writes as, when it is not ours."""
        # The slug becomes a folder name: one that is not a slug (a tenant made before slugs were
        # checked whole) must not make a folder elsewhere, or one whose name ends in a newline.
        if problem := SLUG.problem("tenant slug", self.tenant_slug):
            raise StepFailed(f"no backup folder for this tenant: {problem}")
        # BACKUP_PATH itself is made private when this makes it; once it exists, its mode is the operator's.
        self._backup_root.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
        tenant_folder = private_directory(self._backup_root / self.tenant_slug)
        job_folder = private_directory(tenant_folder / str(self.job_id))
        if owner is not None:
            for folder in (tenant_folder, job_folder):
                os.chown(folder, *owner)
        return job_folder

    def backup_to_restore(self) -> list[BackupFile]:
        """The files of the backup the job restores (its option ``backup_id``; a move's own, taken on
        the server it leaves), on this server: fetched from offsite if check_backup did not leave
        them here (a move's always are), and checked then; a retry that resumes past check_backup
        finds out here whether retention pruned it meanwhile."""
        with self._sessions() as session:
            if self.job_type == JobType.MOVE_SITE:
                backup = BackupBook(session).of_job(self.job_id)
                if backup is None or backup.status != BackupStatus.COMPLETED:
                    raise StepFailed("the move has no verified backup to restore; its retry takes one again")
            else:
                backup = RestoreProofs(session).to_restore(self._tenant_id, uuid.UUID(str(self.options[BACKUP_ID])))
            moved = self.job_type == JobType.MOVE_SITE
            try:
                return local_copy(backup, self._backup_root, self._offsite, check=moved, recorded_here=not moved).files
            except (BackupInvalid, OffsiteError) as error:
                raise StepFailed(f"backup {backup.id} cannot be restored: {error}") from None

    def safety_backup(self) -> list[BackupFile] | None:
        """The files of the verified backup this job took before it changed the site; None if it took none."""
        with self._sessions() as session:
            backup = BackupBook(session).of_job(self.job_id)
            return files_of(backup) if backup is not None and backup.status == BackupStatus.COMPLETED else None

    def remove_backup_directory(self) -> None:
        """Delete this job's folder under BACKUP_PATH, with whatever a backup step wrote there
        before it was recorded (a cancelled job leaves no files behind)."""
        if SLUG.is_valid(self.tenant_slug):
            shutil.rmtree(self._backup_root / self.tenant_slug / str(self.job_id), ignore_errors=True)

    def record_backup(self, site: str, files: Sequence[BackupFile]) -> None:
        make_private(self.backup_directory())
        with self._sessions() as session:
            BackupBook(session).start(self._tenant_id, self.job_id, site, files)
