"""The driver's view of the job whose step it runs: the StepContext a worker hands to drivers."""

from __future__ import annotations

import copy as _copy
from pathlib import Path
from typing import Callable, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioning.backups import BackupBook
from provisioning.credentials import CredentialsUnavailable, SiteCredentials, generate_password
from provisioning.drivers.base import BackupFile
from provisioning.errors import StepFailed
from provisioning.models import ProvisioningJob, Tenant


class JobContext:
    """Each write is a short transaction of its own, so what a step produced is on record even
    if the step fails right after: a retry then finds the password it must reuse and the
    backup files it must discard."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job: ProvisioningJob,
        tenant_slug: str,
        should_stop: Callable[[], bool],
        credentials: SiteCredentials,
        backup_root: Path,
    ):
        self.job_id = job.id
        self.job_type = job.job_type
        self.tenant_slug = tenant_slug
        self.options = dict(job.options or {})
        self._tenant_id = job.tenant_id
        self._sessions = sessions
        self._should_stop = should_stop
        self._credentials = credentials
        self._backup_root = backup_root

    def should_stop(self) -> bool:
        return self._should_stop()

    def unstoppable(self) -> "JobContext":
        """The same context for work that must finish even though the job is stopping: a cancel's clean-up."""
        copy = _copy.copy(self)
        copy._should_stop = _never
        return copy

    def admin_password(self) -> str:
        """The site's admin password: the one a retry's earlier attempt made, or a new one."""
        tenants = Tenant.__table__
        try:
            with self._sessions() as session:
                made = self._credentials.encrypt(generate_password())
                # Stored only if none is: the first attempt's password stays the site's.
                stored = session.scalar(
                    update(tenants)
                    .where(tenants.c.id == self._tenant_id, tenants.c.admin_password_encrypted.is_(None))
                    .values(admin_password_encrypted=made, admin_password_revealed_at=None)
                    .returning(tenants.c.admin_password_encrypted)
                )
                if stored is None:
                    stored = session.scalar(select(tenants.c.admin_password_encrypted).where(tenants.c.id == self._tenant_id))
                session.commit()
                return self._credentials.decrypt(stored)
        except CredentialsUnavailable as unavailable:
            raise StepFailed(str(unavailable)) from None

    def backup_directory(self) -> Path:
        directory = self._backup_root / self.tenant_slug / str(self.job_id)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def record_backup(self, site: str, files: Sequence[BackupFile]) -> None:
        with self._sessions() as session:
            BackupBook(session).start(self._tenant_id, self.job_id, site, files)


def _never() -> bool:
    return False
