"""Offsite copies of backups on a real S3 endpoint on loopback (moto's server, tests/s3_server.py):
copied and checked by backup jobs, fetched back for a restore when the local copy is gone, deleted
with the backup by retention, and a store that is down fails the step and is retried."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from provisioning.backups.book import BackupBook, BackupInvalid, Retention, retention_of
from provisioning.backups.offsite import NOT_COPIED, OffsiteError, OffsiteStore, copy_offsite, local_copy
from provisioning.backups.steps import BackupSteps
from provisioning.enums import BackupStatus, JobStatus, JobType, StepStatus, TenantStatus
from provisioning.errors import StepFailed
from provisioning.jobs.runner import JobRunner
from provisioning.models import SiteBackup
from provisioning.operations.health import check_offsite
from provisioning.platform.settings import load_settings
from provisioning.sites.drivers.base import BackupFile
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.factories import GOOD_DUMP, TenantFactory
from tests.helpers import committing, not_private, wait_for
from tests.integration.test_metrics import scrape, value
from tests.processes import free_port
from tests.records import read_job, read_steps, read_tenant
from tests.s3_server import SECRET_ACCESS_KEY, S3Server
from tests.stack import WorkerProcess

MIB = 1 << 20


def read_backup(sessions, backup_id) -> SiteBackup:
    with sessions() as session:
        return session.get(SiteBackup, backup_id)


def backup_of_job(sessions, job_id) -> SiteBackup:
    with sessions() as session:
        return BackupBook(session).of_job(job_id)


def run_job(settings, sessions, job_id) -> None:
    JobRunner.for_settings(settings, sessions, SimulatedDriver(step_seconds=0), "offsite@test").run(job_id)


def step(sessions, job_id, name):
    return next(step for step in read_steps(sessions, job_id) if step.name == name)


def b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def backed_up(settings, sessions, session, tenant) -> SiteBackup:
    """A backup_site job of the tenant run to its end on ``settings``; its backup."""
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    run_job(settings, sessions, job.id)
    assert read_job(sessions, job.id).status == JobStatus.COMPLETED, read_job(sessions, job.id).error
    return backup_of_job(sessions, job.id)


def recorded_backup(session, tenant, directory: Path, files: dict[str, bytes]) -> SiteBackup:
    """A completed backup of these files (kind: content), written under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, content in files.items():
        path = directory / f"{kind}.bin"
        path.write_bytes(content)
        written.append(BackupFile(kind, path))
    book = BackupBook(session)
    backup = book.start(tenant.id, None, "site.test", written)
    book.verify(backup)
    return backup


def test_a_backup_job_on_a_worker_copies_every_file_offsite_and_the_record_shows_it(isolated, s3, tmp_path):
    environment = {**isolated.environment, **s3.environment(prefix="fleet/backups"), "BACKUP_PATH": str(tmp_path)}
    worker = WorkerProcess(environment, isolated.dispatcher, concurrency=1)
    try:
        with isolated.session() as session:
            tenant = TenantFactory(session).create(status=TenantStatus.ACTIVE)
            job = committing(session, dispatch=isolated.dispatcher.send_job).request_job(tenant.id, JobType.BACKUP_SITE)
        finished = wait_for(
            lambda: (row := read_job(isolated.sessions, job.id)).status in (JobStatus.COMPLETED, JobStatus.FAILED) and row,
            timeout=60, what="the backup job",
        )  # fmt: skip
        assert finished.status == JobStatus.COMPLETED, finished.error
    finally:
        worker.stop()

    backup = backup_of_job(isolated.sessions, job.id)
    assert backup.offsite_key == f"fleet/backups/{tenant.id}/{backup.id}" and backup.offsite_bucket == s3.bucket
    assert backup.offsite_copied_at is not None and backup.offsite_deleted_at is None and backup.offsite_error is None
    kept = s3.objects(backup.offsite_key + "/")
    assert kept == {
        f"{backup.offsite_key}/{Path(file['path']).name}": {"size": file["size"], "sha256": b64(file["sha256"])}
        for file in backup.files
    }
    assert len(kept) == 2  # the simulated site's dump and config
    assert "the store's SHA256 checksums match the record" in step(isolated.sessions, job.id, "copy_offsite").output
    assert SECRET_ACCESS_KEY not in worker.output()


def test_with_offsite_off_a_backup_job_says_it_is_kept_on_this_server_only(settings, sessions, session, tenant_factory, tmp_path):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    backup = backed_up(settings.model_copy(update={"backup_path": tmp_path}), sessions, session, tenant)

    assert step(sessions, backup.job_id, "copy_offsite").output == NOT_COPIED
    assert (backup.offsite_key, backup.offsite_copied_at, backup.offsite_error) == (None, None, None)
    assert check_offsite(settings).ok and "off" in check_offsite(settings).detail


def test_a_large_file_goes_up_in_parts_and_its_composite_checksum_is_checked(offsite_settings, session, tenant_factory, tmp_path):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    large = os.urandom(11 * MIB)  # three parts of 5 MiB, S3's smallest
    backup = recorded_backup(session, tenant, tmp_path / "b", {"database": GOOD_DUMP, "public_files": large})
    store = OffsiteStore.from_settings(offsite_settings)
    store.transfer.multipart_threshold = store.transfer.multipart_chunksize = 5 * MIB

    key = store.copy(backup)

    parts = [hashlib.sha256(large[start : start + 5 * MIB]).digest() for start in range(0, len(large), 5 * MIB)]
    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    reported = store.client.head_object(Bucket=store.bucket, Key=f"{key}/public_files.bin", ChecksumMode="ENABLED")
    assert reported["ChecksumSHA256"].partition("-")[0] == composite and reported["ContentLength"] == len(large)


@pytest.mark.parametrize(
    "size, refusal",
    [
        (1000, "the offsite copy of public_files.bin does not match its record: .* reports SHA256 [0-9a-f]{64}, where"),
        (11 * MIB, "public_files file public_files.bin changed since it was recorded"),
    ],
    ids=["one-put", "in-parts"],
)
def test_a_file_changed_since_it_was_recorded_is_refused_offsite(
    offsite_settings, session, tenant_factory, tmp_path, size, refusal
):
    """One PUT: the store's checksum is of the bytes sent, the record's of the bytes verified, and
    they differ. In parts: the file is read again for the composite, and its sha256 is not the record's."""
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    content = os.urandom(size)
    backup = recorded_backup(session, tenant, tmp_path / "b", {"database": GOOD_DUMP, "public_files": content})
    store = OffsiteStore.from_settings(offsite_settings)
    store.transfer.multipart_threshold = store.transfer.multipart_chunksize = 5 * MIB
    (tmp_path / "b" / "public_files.bin").write_bytes(bytes(size))  # same size, other bytes

    with pytest.raises((OffsiteError, BackupInvalid), match=refusal):
        store.copy(backup)


def test_a_changed_or_missing_offsite_object_is_caught_on_fetch_and_replaces_nothing(
    offsite_settings, s3, session, tenant_factory, tmp_path
):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    backup = recorded_backup(session, tenant, tmp_path / "b", {"database": GOOD_DUMP, "config": b'{"db_name": "x"}'})
    store = OffsiteStore.from_settings(offsite_settings)
    copy_offsite(session, store, backup)
    target = tmp_path / "fetched"
    assert [file.path for file in store.fetch(backup, target)] == [target / "database.bin", target / "config.bin"]
    assert not_private(target) == {}

    s3.client().put_object(Bucket=s3.bucket, Key=f"{backup.offsite_key}/config.bin", Body=b'{"db_name": "y"}')
    with pytest.raises(BackupInvalid, match="the offsite copy of config file config.bin is not the one recorded"):
        store.fetch(backup, tmp_path / "again")
    assert sorted(path.name for path in (tmp_path / "again").iterdir()) == ["database.bin"]  # no partial file left

    s3.client().delete_object(Bucket=s3.bucket, Key=f"{backup.offsite_key}/database.bin")
    with pytest.raises(BackupInvalid, match="downloading database.bin: .* has no such object"):
        store.fetch(backup, tmp_path / "once-more")


@pytest.mark.parametrize(
    "job_type, damage",
    [(JobType.RESTORE_SITE, "deleted"), (JobType.RESTORE_DRILL, "changed")],
    ids=["restore-deleted", "drill-changed"],
)
def test_a_backup_whose_local_copy_is_gone_or_changed_restores_from_its_offsite_copy(
    offsite_settings, sessions, session, tenant_factory, job_type, damage
):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    backup = backed_up(offsite_settings, sessions, session, tenant)
    if damage == "deleted":
        shutil.rmtree(Path(backup.files[0]["path"]).parent)  # the server's disk lost it
    else:
        Path(backup.files[0]["path"]).write_bytes(b"not the dump any more")

    restore = committing(session).request_job(tenant.id, job_type, options={"backup_id": str(backup.id)})
    run_job(offsite_settings, sessions, restore.id)

    assert read_job(sessions, restore.id).status == JobStatus.COMPLETED, read_job(sessions, restore.id).error
    assert "fetched from its offsite copy and checked" in step(sessions, restore.id, "check_backup").output
    assert read_backup(sessions, backup.id).restore_proven_at is not None
    for file in backup.files:
        path = Path(file["path"])
        assert (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()) == (file["size"], file["sha256"])
    assert not_private(offsite_settings.backup_path) == {}


def test_a_restore_whose_local_copy_is_gone_and_whose_store_is_down_fails_without_blaming_the_backup(
    offsite_settings, sessions, session, tenant_factory
):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    backup = backed_up(offsite_settings, sessions, session, tenant)
    shutil.rmtree(Path(backup.files[0]["path"]).parent)
    closed = f"http://127.0.0.1:{free_port()}"
    store_down = offsite_settings.model_copy(update={"offsite_s3_endpoint_url": closed})

    restore = committing(session).request_job(tenant.id, JobType.RESTORE_SITE, options={"backup_id": str(backup.id)})
    run_job(store_down, sessions, restore.id)

    failed = read_job(sessions, restore.id)
    assert failed.status == JobStatus.FAILED
    assert "step check_backup failed" in failed.error and "is missing, and its offsite copy could not be fetched" in failed.error
    assert f"{closed} bucket" in failed.error and "did not answer" in failed.error, failed.error
    assert read_backup(sessions, backup.id).restore_failed_at is None  # the backup is not to blame


def test_a_move_fetches_a_backup_onto_a_server_whose_backup_path_is_elsewhere(
    offsite_settings, sessions, session, tenant_factory, tmp_path
):
    """What a move_site's restore on another server does: no local copy there, the same ``<slug>/<job id>``."""
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    backup = backed_up(offsite_settings, sessions, session, tenant)
    other_server = tmp_path / "other-server"
    shutil.rmtree(offsite_settings.backup_path)  # not on the other server's disk

    copy = local_copy(backup, other_server, OffsiteStore.from_settings(offsite_settings))

    recorded = Path(backup.files[0]["path"])
    assert copy.fetched and [file.path for file in copy.files] == [
        other_server / recorded.parent.parent.name / recorded.parent.name / Path(file["path"]).name for file in backup.files
    ]
    assert not local_copy(backup, other_server, None).fetched  # found there now, and checked
    assert not_private(other_server) == {}


def test_retention_deletes_both_copies(offsite_settings, s3, sessions, session, tenant_factory):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    keep_one = offsite_settings.model_copy(update={"backup_keep_last": 1})
    first = backed_up(keep_one, sessions, session, tenant)
    assert s3.objects(first.offsite_key + "/")

    second = backed_up(keep_one, sessions, session, tenant)  # its record_backup prunes the first

    pruned = read_backup(sessions, first.id)
    assert pruned.status == BackupStatus.PRUNED and pruned.offsite_deleted_at is not None
    assert s3.objects(first.offsite_key + "/") == {} and not Path(first.files[0]["path"]).exists()
    assert len(s3.objects(second.offsite_key + "/")) == 2


def test_a_backup_discarded_by_a_cancel_after_its_copy_loses_its_offsite_copy_at_the_next_prune(
    offsite_settings, s3, sessions, session, tenant_factory
):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    store = OffsiteStore.from_settings(offsite_settings)

    class CancelledOnceCopied(BackupSteps):
        def run(self, step, job_id, tenant_id, options):
            output = super().run(step, job_id, tenant_id, options)
            if step == "copy_offsite":
                committing(session).cancel_job(tenant.id, job.id)
            return output

    runner = JobRunner.for_settings(offsite_settings, sessions, SimulatedDriver(step_seconds=0), "offsite@test")
    steps = CancelledOnceCopied(sessions, retention_of(offsite_settings), store, offsite_settings.backup_path)
    runner.platform_steps.backup_steps = steps
    runner.run(job.id)

    assert read_job(sessions, job.id).status == JobStatus.CANCELLED
    discarded = backup_of_job(sessions, job.id)
    assert discarded.status == BackupStatus.FAILED and len(s3.objects(discarded.offsite_key + "/")) == 2
    BackupBook(session).prune(retention_of(offsite_settings), tenant.id, store)
    assert s3.objects(discarded.offsite_key + "/") == {} and read_backup(sessions, discarded.id).offsite_deleted_at is not None


def test_an_offsite_delete_that_fails_is_kept_on_record_and_retried_by_the_next_prune(
    environment, session, tenant_factory, tmp_path
):
    own = S3Server(f"erpmax-test-{uuid.uuid4().hex[:12]}")
    try:
        settings = load_settings({**environment, **own.environment()})
        store = OffsiteStore.from_settings(settings)
        tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
        backup = recorded_backup(session, tenant, tmp_path / "b", {"database": GOOD_DUMP})
        copy_offsite(session, store, backup)
        retention = Retention(keep_last=0, max_age=timedelta(days=30))

        own.stop()
        assert BackupBook(session).prune(retention, tenant.id, store) == [backup.id]
        session.refresh(backup)
        assert backup.status == BackupStatus.PRUNED and backup.offsite_deleted_at is None
        assert f"{own.url}" in backup.offsite_error and "the next prune tries again" in backup.offsite_error

        own.start()
        assert own.objects(backup.offsite_key + "/")  # still there
        BackupBook(session).prune(retention, tenant.id, store)
        session.refresh(backup)
        assert backup.offsite_deleted_at is not None and backup.offsite_error is None
        assert own.objects(backup.offsite_key + "/") == {}
    finally:
        own.stop()


def test_a_store_that_is_down_fails_copy_offsite_naming_it_and_a_retry_completes_once_it_is_back(
    environment, sessions, session, tenant_factory, tmp_path
):
    own = S3Server(f"erpmax-test-{uuid.uuid4().hex[:12]}")
    try:
        settings = load_settings({**environment, **own.environment(), "BACKUP_PATH": str(tmp_path)})
        assert check_offsite(settings).ok
        tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
        own.stop()
        assert not check_offsite(settings).ok and own.url in check_offsite(settings).detail

        job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
        run_job(settings, sessions, job.id)

        failed = read_job(sessions, job.id)
        assert failed.status == JobStatus.FAILED
        assert "step copy_offsite failed: the offsite copy failed: uploading" in failed.error, failed.error
        assert f"{own.url} bucket {own.bucket} did not answer" in failed.error
        assert SECRET_ACCESS_KEY not in failed.error
        assert [(row.name, row.status) for row in read_steps(sessions, job.id)] == [
            ("run_backup", StepStatus.COMPLETED), ("verify_backup", StepStatus.COMPLETED),
            ("copy_offsite", StepStatus.FAILED), ("record_backup", StepStatus.PENDING),
        ]  # fmt: skip

        own.start()
        retry = committing(session).retry_job(tenant.id, job.id)
        run_job(settings, sessions, retry.id)

        assert read_job(sessions, retry.id).status == JobStatus.COMPLETED, read_job(sessions, retry.id).error
        assert read_job(sessions, retry.id).resume_from == "copy_offsite"
        backup = backup_of_job(sessions, retry.id)
        assert backup.offsite_copied_at is not None and backup.offsite_error is None
        assert len(own.objects(backup.offsite_key + "/")) == 2
    finally:
        own.stop()


def test_metrics_count_backups_with_and_without_an_offsite_copy(client, offsite_settings, session, tenant_factory, tmp_path):
    before = scrape(client)
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    copied = recorded_backup(session, tenant, tmp_path / "a", {"database": GOOD_DUMP})
    recorded_backup(session, tenant, tmp_path / "b", {"database": GOOD_DUMP})
    copy_offsite(session, OffsiteStore.from_settings(offsite_settings), copied)

    after = scrape(client)
    assert value(after, "erpmax_backups_offsite") - value(before, "erpmax_backups_offsite") == 1
    assert value(after, "erpmax_backups_offsite_missing") - value(before, "erpmax_backups_offsite_missing") == 1


def test_a_delete_copies_its_final_backup_offsite_before_it_drops_the_site_and_keeps_the_site_if_it_cannot(
    offsite_settings, s3, sessions, session, tenant_factory
):
    store_down = offsite_settings.model_copy(update={"offsite_s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    refused = committing(session).request_job(tenant.id, JobType.DELETE_SITE)
    run_job(store_down, sessions, refused.id)

    assert read_job(sessions, refused.id).status == JobStatus.FAILED
    assert step(sessions, refused.id, "copy_offsite").status == StepStatus.FAILED
    assert step(sessions, refused.id, "drop_site").status == StepStatus.PENDING
    assert read_tenant(sessions, tenant.id).status == TenantStatus.ACTIVE  # nothing was dropped

    deleted = committing(session).request_job(tenant.id, JobType.DELETE_SITE)
    run_job(offsite_settings, sessions, deleted.id)

    assert read_job(sessions, deleted.id).status == JobStatus.COMPLETED, read_job(sessions, deleted.id).error
    final = backup_of_job(sessions, deleted.id)
    assert final.offsite_copied_at is not None and len(s3.objects(final.offsite_key + "/")) == len(final.files)


def test_a_bucket_that_does_not_exist_fails_the_copy_and_doctor_saying_the_store_refused(
    environment, s3, sessions, session, tenant_factory, tmp_path
):
    settings = load_settings({**environment, **s3.environment(), "OFFSITE_S3_BUCKET": "erpmax-no-such-bucket"})
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    backup = recorded_backup(session, tenant, tmp_path / "b", {"database": GOOD_DUMP})

    with pytest.raises(StepFailed, match="uploading database.bin: .* bucket erpmax-no-such-bucket refused: .*NoSuchBucket"):
        copy_offsite(session, OffsiteStore.from_settings(settings), backup)
    assert "NoSuchBucket" in read_backup(sessions, backup.id).offsite_error
    doctor = check_offsite(settings)
    assert not doctor.ok and "reaching the bucket" in doctor.detail and "refused" in doctor.detail, doctor.detail


def test_the_backups_api_shows_when_a_backup_was_copied_offsite(client, offsite_settings, session, tenant_factory, tmp_path):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    backup = recorded_backup(session, tenant, tmp_path / "b", {"database": GOOD_DUMP})
    url = f"/api/v1/provisioning/backups/{backup.id}"
    assert client.get(url, headers=tenant.headers()).json["data"]["offsite_copied_at"] is None

    copy_offsite(session, OffsiteStore.from_settings(offsite_settings), backup)

    shown = client.get(url, headers=tenant.headers()).json["data"]
    assert shown["offsite_copied_at"] == backup.offsite_copied_at.isoformat() and shown["offsite_deleted_at"] is None
    assert "offsite_key" not in shown  # where the platform keeps its copies is none of the client's business
