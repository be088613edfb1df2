"""Site backups as records you can trust: every file described (size, sha256) and checked, kept
by a retention policy, pruned without ever touching a backup that a running job uses.

A dump that bench reported but that is empty, truncated or not SQL must never count as a
backup (frappe/frappe#5365, #18211: mysqldump's failure hidden behind gzip's exit code).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from provisioning.enums import BackupStatus
from provisioning.errors import NotFound
from provisioning.models import ACTIVE_JOB_STATUSES, ProvisioningJob, SiteBackup
from provisioning.platform.db import utcnow
from provisioning.platform.settings import Settings
from provisioning.sites.drivers.base import BackupFile

if TYPE_CHECKING:  # offsite.py builds on this module
    from provisioning.backups.offsite import OffsiteStore

log = logging.getLogger(__name__)

DATABASE = "database"
FILE_KINDS = (DATABASE, "config", "public_files", "private_files")
# What a mysqldump or mariadb-dump of a frappe site always has near its start, and at its very end:
# a dump whose mysqldump died half-way is still a complete gzip stream, only without the trailer.
SQL_MARKERS = re.compile(rb"CREATE TABLE|INSERT INTO|-- (MariaDB|MySQL) dump", re.IGNORECASE)
DUMP_TRAILER = b"-- Dump completed"
SQL_SNIFF_BYTES = 1 << 20
TRAILER_BYTES = 4096
CHUNK = 1 << 20
STRAY_AFTER = timedelta(minutes=10)
# A backup holds a site's whole database and its site config (the database password in it): only
# the service's own user may read it, whatever umask the program that wrote it had.
PRIVATE_FILE_MODE, PRIVATE_DIRECTORY_MODE = 0o600, 0o700
# The job option that names the backup a restore or a restore drill uses.
BACKUP_ID = "backup_id"


class BackupInvalid(Exception):
    """A backup's files are missing, changed, empty or not what they claim to be."""


@dataclass(frozen=True)
class Retention:
    keep_last: int
    max_age: timedelta


def retention_of(settings: Settings) -> Retention:
    return Retention(keep_last=settings.backup_keep_last, max_age=timedelta(days=settings.backup_max_age_days))


def private_directory(path: Path) -> Path:
    """``path``, made if missing, readable by the service's user alone (also when an older
    version made it readable by all)."""
    path.mkdir(mode=PRIVATE_DIRECTORY_MODE, exist_ok=True)
    path.chmod(PRIVATE_DIRECTORY_MODE)
    return path


def make_private(directory: Path) -> None:
    """Make everything under ``directory`` readable by the service's user alone: what bench wrote
    there has the modes of bench's umask (files 0644, folders 0755 as a rule)."""
    for root, folders, files in os.walk(directory):
        for name in folders:
            Path(root, name).chmod(PRIVATE_DIRECTORY_MODE)
        for name in files:
            Path(root, name).chmod(PRIVATE_FILE_MODE)


def describe(files: Sequence[BackupFile]) -> list[dict]:
    """Each file's kind, path, size and sha256, as the backup's record keeps them."""
    described = []
    for file in files:
        if file.kind not in FILE_KINDS:
            raise ValueError(f"unknown backup file kind {file.kind!r}")
        size, digest = measure(file.path)
        described.append({"kind": file.kind, "path": str(file.path), "size": size, "sha256": digest})
    return described


def files_of(backup: SiteBackup) -> list[BackupFile]:
    """A recorded backup's files, as a driver is given them to restore."""
    return [BackupFile(file["kind"], Path(file["path"])) for file in backup.files]


def verify(files: Sequence[dict]) -> None:
    """Check a recorded backup: every file still exists with its size and sha256, and the database
    dump is a complete gzip stream with SQL in it.

    Raises:
        BackupInvalid: says which file and what is wrong with it.
    """
    if not any(file["kind"] == DATABASE for file in files):
        raise BackupInvalid("the backup has no database dump")
    for file in files:
        path = Path(file["path"])
        if not path.is_file():
            raise BackupInvalid(f"{file['kind']} file {path.name} is missing")
        size, digest = measure(path)
        if size != file["size"] or digest != file["sha256"]:
            raise BackupInvalid(
                f"{file['kind']} file {path.name} changed since it was written ({size} bytes now, {file['size']} then)"
            )
        if file["kind"] == DATABASE:
            _check_dump(path)


def _check_dump(path: Path) -> None:
    if path.stat().st_size == 0:
        raise BackupInvalid(f"the database dump {path.name} is empty")
    head = tail = b""
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(CHUNK):  # to the end: a truncated stream fails only there
                if len(head) < SQL_SNIFF_BYTES:
                    head += chunk[: SQL_SNIFF_BYTES - len(head)]
                tail = (tail + chunk)[-TRAILER_BYTES:]
    except (OSError, EOFError, zlib.error) as error:
        raise BackupInvalid(f"the database dump {path.name} is not a complete gzip file: {error}") from None
    if not SQL_MARKERS.search(head):
        raise BackupInvalid(f"the database dump {path.name} has no SQL in it")
    if DUMP_TRAILER not in tail:
        raise BackupInvalid(f"the database dump {path.name} stops before its end ('{DUMP_TRAILER.decode()}' is missing)")


def measure(path: Path) -> tuple[int, str]:
    """A file's size and sha256 (hex), read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class BackupBook:
    """Reads and writes the ``site_backups`` records on one caller-owned session; it commits."""

    def __init__(self, session: Session):
        self.session = session

    def start(self, tenant_id: uuid.UUID, job_id: uuid.UUID, site: str, files: Sequence[BackupFile]) -> SiteBackup:
        """Record the files a backup command reported, as a backup not yet verified."""
        described = describe(files)
        backup = SiteBackup(
            tenant_id=tenant_id, job_id=job_id, site=site, status=BackupStatus.RUNNING, files=described,
            size=sum(file["size"] for file in described), created_at=utcnow(),
        )  # fmt: skip
        self.session.add(backup)
        self.session.commit()
        return backup

    def of_job(self, job_id: uuid.UUID) -> SiteBackup | None:
        """The job's newest backup."""
        return self.session.scalars(
            select(SiteBackup).where(SiteBackup.job_id == job_id).order_by(SiteBackup.created_at.desc())
        ).first()

    def kept_of_job(self, job_id: uuid.UUID) -> int:
        """How many of the job's backups are verified and kept."""
        kept = (SiteBackup.job_id == job_id, SiteBackup.status == BackupStatus.COMPLETED)
        count = self.session.scalar(select(func.count()).select_from(SiteBackup).where(*kept))
        self.session.commit()
        return count

    def verify(self, backup: SiteBackup) -> None:
        """Mark the backup completed if its files pass ``verify``; else failed, and raise BackupInvalid.

        Completed only if it is still unverified then (compare-and-set): a worker that was
        declared lost while it checked must not bring back a backup the sweeper discarded.
        """
        try:
            verify(backup.files)
        except BackupInvalid as invalid:
            self._discard(backup, str(invalid))
            self.session.commit()
            raise
        completed = self.session.execute(
            update(SiteBackup)
            .where(SiteBackup.id == backup.id, SiteBackup.status == BackupStatus.RUNNING)
            .values(status=BackupStatus.COMPLETED, completed_at=utcnow())
        ).rowcount
        self.session.commit()
        if not completed:
            raise BackupInvalid("the backup was discarded while it was being checked (its job ended meanwhile)")
        self.session.refresh(backup)

    def take_over(self, from_job_id: uuid.UUID, to_job_id: uuid.UUID) -> None:
        """A retry resumes its predecessor's work: verified backups become the retry's, and an
        unverified one (its step failed or was cut short) is discarded, files and all."""
        for backup in self.session.scalars(select(SiteBackup).where(SiteBackup.job_id == from_job_id)):
            if backup.status == BackupStatus.RUNNING:
                self._discard(backup, f"not verified: job {from_job_id} failed before it could be")
            elif backup.status == BackupStatus.COMPLETED:
                backup.job_id = to_job_id
        self.session.commit()

    def discard_of_job(self, job_id: uuid.UUID, reason: str) -> int:
        """Discard the job's backups, verified or not, files and all (a cancelled job leaves none
        behind); returns how many. Neither retention nor the sweeper touches a backup whose job
        is still active, so none of them is pruned meanwhile."""
        backups = self.session.scalars(
            select(SiteBackup).where(
                SiteBackup.job_id == job_id, SiteBackup.status.in_([BackupStatus.RUNNING, BackupStatus.COMPLETED])
            )
        ).all()
        for backup in backups:
            self._discard(backup, reason)
        self.session.commit()
        return len(backups)

    def prune(
        self, retention: Retention, tenant_id: uuid.UUID | None = None, offsite: OffsiteStore | None = None
    ) -> list[uuid.UUID]:
        """Delete the files of completed backups beyond the newest ``keep_last`` of each tenant or
        older than ``max_age``, and mark them pruned; a backup whose job is still active is kept,
        and so is one an active job restores (its option ``backup_id``). With an ``offsite`` store,
        the offsite copies of backups no longer kept go too (``OffsiteStore.delete_unkept``: one
        that fails is tried again by the next prune).

        Unverified backups whose job ended anyway (cancelled, its worker lost) are discarded too:
        nothing would ever verify them.
        """
        self._discard_abandoned(tenant_id)
        newest_first = func.row_number().over(partition_by=SiteBackup.tenant_id, order_by=SiteBackup.created_at.desc())
        ranked = (
            select(SiteBackup.id, SiteBackup.created_at, SiteBackup.job_id, newest_first.label("rank"))
            .where(SiteBackup.status == BackupStatus.COMPLETED)
            .where(*([SiteBackup.tenant_id == tenant_id] if tenant_id else []))
            .subquery()
        )
        in_use = select(ProvisioningJob.id).where(ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES))
        expired = self.session.scalars(
            select(ranked.c.id).where(
                (ranked.c.rank > retention.keep_last) | (ranked.c.created_at < utcnow() - retention.max_age),
                ranked.c.job_id.is_(None) | ranked.c.job_id.not_in(in_use),
                ranked.c.id.not_in(self._being_restored()),
            )
        ).all()
        pruned = []
        for backup_id in expired:
            # Claimed first, so two pruners never both delete (and one never deletes a kept backup).
            # The claim waits for a restore being asked for it (``RestoreProofs.restorable`` locks
            # the row until that request commits), then asks again whether a restore uses it.
            claimed = self.session.execute(
                update(SiteBackup)
                .where(SiteBackup.id == backup_id, SiteBackup.status == BackupStatus.COMPLETED)
                .values(status=BackupStatus.PRUNED, pruned_at=utcnow())
            ).rowcount
            if claimed and backup_id in self._being_restored():
                self.session.rollback()
                continue
            self.session.commit()
            if claimed:
                _delete_files(self.session.get(SiteBackup, backup_id).files)
                pruned.append(backup_id)
        if pruned:
            log.info(
                "backups: pruned %d by retention (keep %d, at most %s old)", len(pruned), retention.keep_last, retention.max_age
            )
        if offsite is not None:
            offsite.delete_unkept(self.session, tenant_id)
        return pruned

    def _being_restored(self) -> list[uuid.UUID]:
        """The backups an active job restores (its option ``backup_id``)."""
        named = ProvisioningJob.options[BACKUP_ID].as_string()
        active = ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES)
        return [uuid.UUID(backup_id) for backup_id in self.session.scalars(select(named).where(active, named.is_not(None)))]

    def remove_strays(self, root: Path, settle: timedelta = STRAY_AFTER) -> list[Path]:
        """Delete the job directories under ``root`` (``<slug>/<job id>``) that no job still
        writes and no kept backup uses: what failed or cancelled backup steps left, which
        nothing else would ever remove. Returns them.

        Directories are matched by their ``<slug>/<job id>`` tail, so workers and the sweeper may mount
        the shared storage at different paths; one changed within ``settle`` is left for the next
        sweep (its job may have started after the active jobs were read).
        """
        kept = {
            Path(file["path"]).parent.parts[-2:]
            for files in self.session.scalars(
                select(SiteBackup.files).where(SiteBackup.status.in_([BackupStatus.RUNNING, BackupStatus.COMPLETED]))
            )
            for file in files
        }
        active = {
            str(job)
            for job in self.session.scalars(select(ProvisioningJob.id).where(ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES)))
        }
        self.session.commit()
        settled_before = time.time() - settle.total_seconds()
        removed = []
        for directory in root.glob("*/*") if root.is_dir() else []:
            if (
                directory.is_dir()
                and directory.parts[-2:] not in kept
                and directory.name not in active
                and directory.stat().st_mtime < settled_before
            ):
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
        if removed:
            log.info("backups: removed %d directories that failed or cancelled backups left", len(removed))
        return removed

    def list(self, tenant_id: uuid.UUID, page: int, size: int) -> tuple[Sequence[SiteBackup], int]:
        """One page of the tenant's backups, newest first, and the total."""
        condition = SiteBackup.tenant_id == tenant_id
        total = self.session.scalar(select(func.count()).select_from(SiteBackup).where(condition))
        backups = self.session.scalars(
            select(SiteBackup)
            .where(condition)
            .order_by(SiteBackup.created_at.desc(), SiteBackup.id.desc())
            .limit(size)
            .offset((page - 1) * size)
        ).all()
        return backups, total or 0

    def get(self, tenant_id: uuid.UUID, backup_id: uuid.UUID) -> SiteBackup:
        """Raises NotFound for a missing backup and for another tenant's alike."""
        backup = self.session.get(SiteBackup, backup_id)
        if backup is None or backup.tenant_id != tenant_id:
            raise NotFound("backup not found")
        return backup

    def _discard_abandoned(self, tenant_id: uuid.UUID | None) -> None:
        active = select(ProvisioningJob.id).where(ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES))
        abandoned = self.session.scalars(
            select(SiteBackup)
            .where(SiteBackup.status == BackupStatus.RUNNING, SiteBackup.job_id.is_(None) | SiteBackup.job_id.not_in(active))
            .where(*([SiteBackup.tenant_id == tenant_id] if tenant_id else []))
            .with_for_update(skip_locked=True)
        ).all()
        for backup in abandoned:
            self._discard(backup, f"not verified: job {backup.job_id} ended before it could be")
            log.warning("backup %s of %s discarded: its job ended before it was verified", backup.id, backup.site)
        self.session.commit()

    def _discard(self, backup: SiteBackup, error: str) -> None:
        backup.status = BackupStatus.FAILED
        backup.error = error
        _delete_files(backup.files)


def _delete_files(files: Sequence[dict]) -> None:
    for file in files:
        path = Path(file["path"])
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # the job's own directory, once it is empty
        except OSError:
            pass
