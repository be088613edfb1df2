"""A worker run by root, on a bench that runs as its frappe_user: the folders bench writes into.

Real bench, started by root, switches to the ``frappe_user`` of ``common_site_config.json`` (and
refuses to run without one); the fake follows it where it matters, in the folders outside the
bench it writes into (a backup's, the archive), asking the system whether that user can write
them. These tests run as root, as CI does, with ``nobody`` as the bench's user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from provisioning.enums import JobStatus, JobType
from provisioning.jobs.runner import JobRunner
from provisioning.platform.settings import BenchSettings
from provisioning.sites.drivers.bench import BenchDriver
from tests.fake_bench import FAKE_BENCH, make_bench
from tests.helpers import committing, not_private
from tests.records import read_job, read_steps

BENCH_USER = pwd.getpwnam("nobody")
ROOT_PASSWORD = "Root-Secret-5d1c"


@pytest.fixture
def outside():
    """A folder other users can pass through (pytest's own are root's alone), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="bench-user-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def handed_to_the_bench_user(folder: Path) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chown(folder, BENCH_USER.pw_uid, BENCH_USER.pw_gid)
    return folder


@pytest.fixture
def run_job(settings, sessions, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_BENCH_DB_ROOT_PASSWORD", ROOT_PASSWORD)
    bench = make_bench(tmp_path / "bench", frappe_user=BENCH_USER.pw_name)

    def run(job_id, backup_path: Path, archive_path: Path):
        driver = BenchDriver(
            BenchSettings(bench_path=str(bench), executable=str(FAKE_BENCH), site_domain="erp.example.test",
                          db_root_password=ROOT_PASSWORD, archive_path=str(archive_path), step_timeout_seconds="30")
        )  # fmt: skip
        worker_settings = settings.model_copy(update={"backup_path": backup_path})
        JobRunner.for_settings(worker_settings, sessions, driver, "root-worker@test").run(job_id)
        return read_job(sessions, job_id)

    run.bench = bench
    return run


def request(session, tenant, job_type=JobType.CREATE_SITE):
    return committing(session).request_job(tenant.id, job_type).id


def test_a_backup_by_a_root_worker_goes_into_folders_handed_to_the_bench_user_and_kept_private(
    session, sessions, tenant_factory, run_job, outside
):
    backups, archive = handed_to_the_bench_user(outside / "backups"), handed_to_the_bench_user(outside / "archive")
    tenant = tenant_factory.create()
    created = run_job(request(session, tenant), backups, archive)
    assert created.status == JobStatus.COMPLETED, created.error
    assert "running as nobody (the bench's frappe_user: the worker is root)" in read_steps(sessions, created.id)[0].output

    backup = run_job(request(session, tenant, JobType.BACKUP_SITE), backups, archive)

    assert backup.status == JobStatus.COMPLETED, backup.error
    job_folder = backups / tenant.tenant.slug / str(backup.id)
    for folder in (job_folder.parent, job_folder):
        assert (folder.stat().st_uid, folder.stat().st_gid) == (BENCH_USER.pw_uid, BENCH_USER.pw_gid)
    assert len(list(job_folder.iterdir())) == 4
    assert not_private(backups) == {}


@pytest.mark.parametrize("closed", ["backups", "archive"])
def test_a_folder_the_bench_user_cannot_write_fails_the_first_step_saying_so(
    session, tenant_factory, run_job, outside, closed
):
    folders = {name: handed_to_the_bench_user(outside / name) for name in ("backups", "archive")}
    os.chown(folders[closed], 0, 0)  # root's alone: nobody cannot enter it
    job = run_job(request(session, tenant_factory.create()), folders["backups"], folders["archive"])

    assert job.status == JobStatus.FAILED
    what = "BACKUP_PATH" if closed == "backups" else "the archive folder"
    assert job.error == (
        f"step check_preconditions failed: bench runs as nobody (the bench's frappe_user: the worker is root), "
        f"which cannot write {what} {folders[closed]}: make it writable by nobody"
    )


def test_a_drop_into_an_archive_the_bench_user_cannot_write_is_refused_before_anything_is_dropped_and_its_retry_finishes_it(
    session, sessions, tenant_factory, run_job, outside
):
    backups, archive = handed_to_the_bench_user(outside / "backups"), handed_to_the_bench_user(outside / "archive")
    tenant = tenant_factory.create()
    assert run_job(request(session, tenant), backups, archive).status == JobStatus.COMPLETED
    site = run_job.bench / "sites" / f"{tenant.tenant.slug}.erp.example.test"
    database = run_job.bench / "fake-mariadb" / json.loads((site / "site_config.json").read_text())["db_name"]

    os.chown(archive, 0, 0)  # closed to the bench's user after the site was made
    failed = run_job(request(session, tenant, JobType.DELETE_SITE), backups, archive)

    assert failed.status == JobStatus.FAILED
    assert "step drop_site failed: bench runs as nobody" in failed.error and f"the archive folder {archive}" in failed.error
    assert site.is_dir() and database.is_dir()  # bench would have dropped the database, then failed to move the folder

    os.chown(archive, BENCH_USER.pw_uid, BENCH_USER.pw_gid)
    retry = committing(session).retry_job(tenant.id, failed.id)
    assert retry.resume_from == "drop_site"
    assert run_job(retry.id, backups, archive).status == JobStatus.COMPLETED
    assert not site.exists() and not database.exists() and (archive / site.name).is_dir()


def test_a_root_worker_on_a_bench_without_frappe_user_fails_saying_how_to_fix_it(session, tenant_factory, run_job, outside):
    (run_job.bench / "sites" / "common_site_config.json").write_text("{}")
    job = run_job(request(session, tenant_factory.create()), outside / "backups", outside / "archive")

    assert job.status == JobStatus.FAILED
    assert "the worker runs as root, and bench refuses to run as root unless" in job.error
    assert "set frappe_user there (the user that owns the bench), or run the worker as that user" in job.error
