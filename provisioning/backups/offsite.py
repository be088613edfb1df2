"""Offsite copies of backups in S3-compatible object storage: one server's disk is not enough once
sites live on many. A backup is copied once it is verified (the backup_site step copy_offsite),
fetched back where no good local copy is (a lost disk; a restore on another server), and its
objects are deleted when retention prunes it or a cancel discards it.

What is verified, and how:

- Copy: every file goes up with S3's SHA256 checksum (``ChecksumAlgorithm``), which botocore
  computes from the bytes it sends and S3 checks against the body it receives. Then the store is
  asked what it keeps (``head_object``, ``ChecksumMode=ENABLED``; base64, where the record keeps
  hex), and that is compared with the record's sha256. A file below ``part_size`` is one PUT: the
  store's checksum is the whole file's sha256. A larger one goes up in parts, and S3 keeps a
  composite checksum (the sha256 of the parts' sha256s, ``-N``; S3 has no whole-object SHA256
  for multipart uploads): the same is computed here from the file, read in the parts the
  transfer used, while the whole file's sha256 is checked against the record. Either way what the
  store holds is tied to the recorded sha256, or the step fails saying which file differs.
- Fetch: every byte downloaded is hashed and checked against the record's size and sha256
  before the file takes its place; a copy that differs replaces nothing.

The store's secret key is handed to boto3 only, never put in a message or a log line; messages
name the endpoint and the bucket. Imports the platform, the models, and backups.book.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr
from s3transfer.utils import ChunksizeAdjuster
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from provisioning.backups.book import (
    CHUNK,
    PRIVATE_DIRECTORY_MODE,
    PRIVATE_FILE_MODE,
    BackupInvalid,
    measure,
    private_directory,
    verify,
)
from provisioning.enums import BackupStatus
from provisioning.errors import StepFailed
from provisioning.models import SiteBackup
from provisioning.platform.db import utcnow
from provisioning.platform.quoting import first_line
from provisioning.platform.settings import Settings
from provisioning.sites.drivers.base import BackupFile

log = logging.getLogger(__name__)

# Files from this size on go up in parts of this size (S3's smallest is 5 MiB; at most 10,000 parts).
PART_SIZE = 64 << 20
# Bounded waits: a store that does not answer fails the step in seconds, not at the task's time limit.
CLIENT_CONFIG = Config(connect_timeout=5, read_timeout=60, retries={"mode": "standard", "max_attempts": 3})
CHECKSUM = "SHA256"
NOT_COPIED = "kept on this server only: offsite copies are off (OFFSITE_S3_BUCKET is not set)"


class OffsiteError(Exception):
    """The offsite store did not answer or refused; the message names the endpoint and bucket."""


class OffsiteStore:
    """One bucket (under a key prefix) of an S3-compatible store, for backups' files.

    A backup's files are kept as ``<prefix>/<tenant id>/<backup id>/<file name>``: ids, never
    slugs or paths, so the key never changes and says nothing of the server that took it.
    """

    def __init__(self, client, bucket: str, prefix: str = "", endpoint: str | None = None, part_size: int = PART_SIZE):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.where = f"{endpoint or 'AWS S3'} bucket {bucket}"
        self.transfer = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)

    @classmethod
    def from_settings(cls, settings: Settings) -> OffsiteStore | None:
        """The store the OFFSITE_S3_* settings name; None when no bucket is set (offsite is off)."""
        if not settings.offsite_s3_bucket:
            return None
        secret = settings.offsite_s3_secret_access_key
        endpoint = settings.offsite_s3_endpoint_url
        client = _client(endpoint, settings.offsite_s3_region, settings.offsite_s3_access_key_id, secret)
        return cls(client, settings.offsite_s3_bucket, settings.offsite_s3_prefix, endpoint)

    def key_of(self, backup: SiteBackup) -> str:
        return "/".join(filter(None, (self.prefix, str(backup.tenant_id), str(backup.id))))

    def check(self) -> str:
        """Whether the bucket answers (``head_bucket``): for ``doctor``."""
        with self._asking("reaching the bucket"):
            self.client.head_bucket(Bucket=self.bucket)
        return f"{self.where} answers; backups go under {self.prefix or '(the bucket root)'}/"

    def copy(self, backup: SiteBackup) -> str:
        """Upload every file of the backup and check what the store keeps; returns the key prefix.

        Raises:
            OffsiteError: the store did not answer, or keeps something else than the record says.
            BackupInvalid: a local file changed since it was recorded.
        """
        key = self.key_of(backup)
        for file in backup.files:
            path = Path(file["path"])
            with self._asking(f"uploading {path.name}"):
                self.client.upload_file(
                    str(path), self.bucket, f"{key}/{path.name}", Config=self.transfer,
                    ExtraArgs={"ChecksumAlgorithm": CHECKSUM, "Metadata": {"sha256": file["sha256"]}},
                )  # fmt: skip
                kept = self.client.head_object(Bucket=self.bucket, Key=f"{key}/{path.name}", ChecksumMode="ENABLED")
            self._check_copy(file, path, kept)
        return key

    def _check_copy(self, file: dict, path: Path, kept: dict) -> None:
        name, reported = path.name, kept.get("ChecksumSHA256")
        if kept["ContentLength"] != file["size"]:
            raise OffsiteError(f"{self.where} keeps {kept['ContentLength']} bytes of {name}, the record says {file['size']}")
        if not reported:
            raise OffsiteError(f"{self.where} keeps no SHA256 checksum of {name}: it cannot vouch for the copy")
        expected, parts = self._expected_checksum(file, path)
        digest, _, count = reported.partition("-")
        if digest != expected or (count and int(count) != parts):
            what = "SHA256" if parts == 1 else f"composite SHA256 of {parts} parts"
            raise OffsiteError(
                f"the offsite copy of {name} does not match its record: {self.where} reports {what} "
                f"{_hex(digest)}, where the recorded bytes give {_hex(expected)}"
            )

    def _expected_checksum(self, file: dict, path: Path) -> tuple[str, int]:
        """The checksum S3 keeps for this file (base64) had it received the recorded bytes, and in how many parts."""
        size = file["size"]
        if size < self.transfer.multipart_threshold:
            return base64.b64encode(bytes.fromhex(file["sha256"])).decode(), 1
        part_size = ChunksizeAdjuster().adjust_chunksize(self.transfer.multipart_chunksize, size)
        whole, parts = hashlib.sha256(), []
        with path.open("rb") as stream:
            while True:
                part, left = hashlib.sha256(), part_size
                while left and (block := stream.read(min(CHUNK, left))):
                    part.update(block)
                    whole.update(block)
                    left -= len(block)
                if left == part_size:
                    break
                parts.append(part.digest())
        if whole.hexdigest() != file["sha256"]:
            raise BackupInvalid(f"{file['kind']} file {path.name} changed since it was recorded")
        return base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode(), len(parts)

    def fetch(self, backup: SiteBackup, directory: Path) -> list[BackupFile]:
        """Download the backup's offsite copy into ``directory`` (made if missing; files 0600), each
        file checked against the record's size and sha256 before it replaces what is there.
        For any server: a restore here, or on the server a site moves to.

        Raises:
            BackupInvalid: an object is missing or differs from the record (nothing is replaced).
            OffsiteError: the store did not answer.
        """
        bucket, key = backup.offsite_bucket or self.bucket, backup.offsite_key or self.key_of(backup)
        directory.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
        fetched = []
        for file in backup.files:
            name = Path(file["path"]).name
            target, partial = directory / name, directory / f".{name}.offsite-partial"
            try:
                with self._asking(f"downloading {name}", fetching=True), _private_file(partial) as stream:
                    self.client.download_fileobj(bucket, f"{key}/{name}", stream, Config=self.transfer)
                size, digest = measure(partial)
                if (size, digest) != (file["size"], file["sha256"]):
                    raise BackupInvalid(
                        f"the offsite copy of {file['kind']} file {name} is not the one recorded "
                        f"({size} bytes, sha256 {digest}; the record: {file['size']} bytes, {file['sha256']})"
                    )
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            os.replace(partial, target)
            fetched.append(BackupFile(file["kind"], target))
        return fetched

    def delete(self, backup: SiteBackup) -> None:
        """Delete the backup's objects (one already gone is no error: S3 answers a delete the same)."""
        bucket, key = backup.offsite_bucket or self.bucket, backup.offsite_key or self.key_of(backup)
        for file in backup.files:
            name = Path(file["path"]).name
            with self._asking(f"deleting {name}"):
                self.client.delete_object(Bucket=bucket, Key=f"{key}/{name}")

    def delete_unkept(self, session: Session, tenant_id=None) -> int:
        """Delete the offsite objects of backups no longer kept (pruned, or discarded after a copy
        began); returns how many backups' objects were deleted. A backup whose delete fails keeps
        its ``offsite_key`` and no ``offsite_deleted_at``, with the error: the next prune tries
        again. A store that does not answer ends this round (no need to hammer it)."""
        unkept = session.scalars(
            select(SiteBackup)
            .where(SiteBackup.status.in_([BackupStatus.PRUNED, BackupStatus.FAILED]), _objects_may_be_there())
            .where(*([SiteBackup.tenant_id == tenant_id] if tenant_id else []))
            .with_for_update(skip_locked=True)
        ).all()
        deleted = 0
        for backup in unkept:
            try:
                self.delete(backup)
            except OffsiteError as error:
                backup.offsite_error = f"deleting the offsite copy failed (the next prune tries again): {error}"
                session.commit()
                log.warning("backups: offsite copy of backup %s not deleted, for now: %s", backup.id, error)
                break
            backup.offsite_deleted_at, backup.offsite_error = utcnow(), None
            deleted += 1
        session.commit()
        if deleted:
            log.info("backups: deleted the offsite copies of %d backup(s) no longer kept", deleted)
        return deleted

    @contextmanager
    def _asking(self, what: str, fetching: bool = False):
        """Turn boto3's errors into ours; a missing object is the backup's problem only when fetched
        (a missing bucket, or an object gone right after its upload, is the store's)."""
        try:
            yield
        except ClientError as error:
            if fetching and error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise BackupInvalid(f"{what}: {self.where} has no such object ({first_line(error)})") from None
            raise OffsiteError(f"{what}: {self.where} refused: {first_line(error)}") from None
        except Boto3Error as error:  # an upload the store refused (S3UploadFailedError wraps its ClientError)
            raise OffsiteError(f"{what}: {self.where} refused: {first_line(error)}") from None
        except BotoCoreError as error:  # no connection, a timeout: after botocore's retries
            raise OffsiteError(f"{what}: {self.where} did not answer: {first_line(error)}") from None


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, region: str | None, key_id: str | None, secret: SecretStr | None):
    """One client per store and keys, per process: making one costs ~0.1 s (boto3 reads its service
    model), and a worker makes a runner per job. boto3's clients are safe to share between threads."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        # S3-compatible stores (MinIO, Ceph...) answer paths; AWS takes both.
        config=CLIENT_CONFIG.merge(Config(s3={"addressing_style": "path"}) if endpoint else Config()),
    )


def copy_offsite(session: Session, store: OffsiteStore | None, backup: SiteBackup) -> str:
    """The step copy_offsite: copy a verified backup and record it. The key is recorded (and
    committed) before the first upload, so whatever a copy cut short leaves is deleted with the
    backup; a retry copies again, overwriting.

    Raises:
        StepFailed: the copy failed; says why, naming the endpoint (never a key).
    """
    if store is None:
        return NOT_COPIED
    if has_offsite_copy(backup):
        return f"backup {backup.id} was copied to {store.where} already, under {backup.offsite_key}"
    backup.offsite_bucket, backup.offsite_key = store.bucket, store.key_of(backup)
    backup.offsite_copied_at = backup.offsite_deleted_at = backup.offsite_error = None
    session.commit()
    try:
        store.copy(backup)
    except (OffsiteError, BackupInvalid) as error:
        backup.offsite_error = str(error)
        session.commit()
        raise StepFailed(f"the offsite copy failed: {error}") from None
    backup.offsite_copied_at = utcnow()
    session.commit()
    return (
        f"backup {backup.id}: {len(backup.files)} file(s), {backup.size} bytes copied to {store.where} under "
        f"{backup.offsite_key}; the store's SHA256 checksums match the record"
    )


@dataclass(frozen=True)
class LocalCopy:
    files: list[BackupFile]
    fetched: bool  # from offsite, just now


def local_copy(
    backup: SiteBackup, backup_root: Path, store: OffsiteStore | None, check: bool = True, recorded_here: bool = True
) -> LocalCopy:
    """The backup's files on this server, to restore from: where they were recorded, or under this
    server's BACKUP_PATH at the same ``<slug>/<job id>`` (another server's, or a fetch's); when
    neither is good, fetched from the offsite copy into the latter, and checked. ``check=False``
    only finds files that a check_backup before it checked (a restore step; hashing twice costs).
    ``recorded_here=False`` says the recorded paths are another server's (a move's backup, taken
    on the server it leaves): only this server's BACKUP_PATH is looked at.

    Raises:
        BackupInvalid: no good copy here and none offsite, or one that differs from the record.
        OffsiteError: none good here, and the offsite store did not answer.
    """
    recorded = Path(backup.files[0]["path"]).parent
    here = backup_root.joinpath(*recorded.parts[-2:])
    candidates = [backup.files] if recorded_here else []
    if here != recorded or not recorded_here:
        candidates.append(_moved(backup.files, here))
    problem = None
    for files in candidates:
        try:
            verify(files) if check else _present(files)
            return LocalCopy([BackupFile(file["kind"], Path(file["path"])) for file in files], fetched=False)
        except BackupInvalid as invalid:
            problem = problem or invalid
    if store is None or not has_offsite_copy(backup):
        raise problem
    backup_root.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    private_directory(private_directory(here.parent) / here.name)
    try:
        fetched = store.fetch(backup, here)
        verify(_moved(backup.files, here))
    except BackupInvalid as invalid:
        raise BackupInvalid(f"{problem}, and its offsite copy is no better: {invalid}") from None
    except OffsiteError as error:
        raise OffsiteError(f"{problem}, and its offsite copy could not be fetched: {error}") from None
    log.info("backups: backup %s fetched from offsite into %s", backup.id, here)
    return LocalCopy(fetched, fetched=True)


def has_offsite_copy(backup: SiteBackup) -> bool:
    return backup.offsite_copied_at is not None and backup.offsite_deleted_at is None


def offsite_counts(session: Session) -> tuple[int, int, int]:
    """Completed backups with an offsite copy, completed ones without, and unkept ones whose
    offsite objects wait to be deleted."""
    copied = (SiteBackup.offsite_copied_at.is_not(None)) & SiteBackup.offsite_deleted_at.is_(None)
    completed = SiteBackup.status == BackupStatus.COMPLETED
    unkept = or_(SiteBackup.status == BackupStatus.PRUNED, SiteBackup.status == BackupStatus.FAILED)
    row = session.execute(
        select(
            func.count().filter(completed & copied),
            func.count().filter(completed & ~copied),
            func.count().filter(unkept & _objects_may_be_there()),
        )
    ).one()
    return tuple(row)


def _objects_may_be_there():
    return SiteBackup.offsite_key.is_not(None) & SiteBackup.offsite_deleted_at.is_(None)


def _moved(files: Sequence[dict], directory: Path) -> list[dict]:
    return [{**file, "path": str(directory / Path(file["path"]).name)} for file in files]


def _present(files: Sequence[dict]) -> None:
    for file in files:
        if not Path(file["path"]).is_file():
            raise BackupInvalid(f"{file['kind']} file {Path(file['path']).name} is missing")


@contextmanager
def _private_file(path: Path):
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE), "wb") as stream:
        yield stream


def _hex(checksum: str) -> str:
    try:
        return base64.b64decode(checksum, validate=True).hex()
    except ValueError:
        return checksum
