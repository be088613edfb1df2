"""The bench driver against a fake ``bench`` run as a real subprocess, with jobs on real PostgreSQL.

The fake behaves like Frappe's CLI on the file system (tests/fake_bench) and is told through its
environment to fail, hang or write a bad dump, as the real one does on a bad day.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from sqlalchemy import select, update

from api import create_app
from provisioning.backups.book import BackupBook
from provisioning.enums import BackupStatus, JobStatus, JobType, StepStatus, TenantStatus
from provisioning.errors import StepStopped, StepTerminated
from provisioning.jobs.runner import JobRunner
from provisioning.jobs.step_interruptions import TAKEN_AWAY, StopFlags
from provisioning.models import JobEvent, ProvisioningJob, SiteBackup, Tenant
from provisioning.platform.settings import BenchSettings
from provisioning.sites.credentials import SiteCredentials
from provisioning.sites.drivers.base import BackupFile
from provisioning.sites.drivers.bench import BenchDriver
from provisioning.sites.drivers.bench_command import TERMINATE_GRACE_SECONDS, Command
from provisioning.sites.drivers.bench_config import BenchConfig
from tests.factories import TenantFactory
from tests.fake_bench import FAKE_BENCH, make_bench
from tests.helpers import StrictClient, committing, not_private, wait_for
from tests.records import read_job, read_steps, read_tenant
from tests.stack import WorkerProcess

DOMAIN = "erp.example.test"
ROOT_PASSWORD = "Root-Secret-7f3a9"
MARIADB_WARNING = "Warning: MariaDB version ['10.11', '19'] is more than 10.8 which is not yet tested with Frappe Framework."


@dataclass
class Bench:
    path: Path
    calls_log: Path

    def site_dir(self, tenant) -> Path:
        return self.path / "sites" / f"{tenant.tenant.slug}.{DOMAIN}"

    def database(self, tenant) -> Path:
        """The fake MariaDB's folder for the tenant's site."""
        return self.path / "fake-mariadb" / json.loads((self.site_dir(tenant) / "site_config.json").read_text())["db_name"]

    def administrator_password(self, tenant) -> str:
        """The Administrator password the fake's new-site was given for the tenant's site."""
        return (self.database(tenant) / "administrator_password").read_text()

    def calls(self) -> list[list[str]]:
        """Every bench command run so far, without the program's path."""
        if not self.calls_log.exists():
            return []
        return [json.loads(line)[1:] for line in self.calls_log.read_text().splitlines()]


@pytest.fixture
def bench(tmp_path, monkeypatch) -> Bench:
    made = Bench(make_bench(tmp_path / "bench"), tmp_path / "bench-calls.log")
    monkeypatch.setenv("FAKE_BENCH_LOG", str(made.calls_log))
    monkeypatch.setenv("FAKE_BENCH_DB_ROOT_PASSWORD", ROOT_PASSWORD)
    return made


@pytest.fixture
def bench_settings(bench) -> BenchSettings:
    return BenchSettings(
        bench_path=str(bench.path),
        executable=str(FAKE_BENCH),
        site_domain=DOMAIN,
        db_root_password=ROOT_PASSWORD,
        step_timeout_seconds="30",
    )


@pytest.fixture
def worker_settings(settings, tmp_path):
    # A quick heartbeat: it is what brings a cancel to a step that runs.
    return settings.model_copy(update={"backup_path": tmp_path / "backups", "job_heartbeat_seconds": 0.2})


@pytest.fixture
def run_job(worker_settings, sessions, bench_settings):
    """Run a job to its end in this process, as a worker would, on the bench driver."""

    def run(job_id, driver_class=BenchDriver, **bench_changes) -> ProvisioningJob:
        driver = driver_class(replace(bench_settings, **bench_changes))
        JobRunner.for_settings(worker_settings, sessions, driver, "bench-test@localhost").run(job_id)
        return read_job(sessions, job_id)

    return run


def backups_of(sessions, tenant_id) -> list[SiteBackup]:
    with sessions() as session:
        return list(session.scalars(select(SiteBackup).where(SiteBackup.tenant_id == tenant_id).order_by(SiteBackup.created_at)))


def everything_recorded(sessions, job_id) -> str:
    """All the job's text the service keeps or shows: error, message, step output, events."""
    job = read_job(sessions, job_id)
    with sessions() as session:
        events = session.scalars(select(JobEvent.detail).where(JobEvent.job_id == job_id)).all()
    steps = [f"{step.message}\n{step.output}" for step in read_steps(sessions, job_id)]
    return "\n".join([job.error or "", job.message, *steps, *events])


def request(session, tenant, job_type=JobType.CREATE_SITE, **options) -> ProvisioningJob:
    return committing(session).request_job(tenant.id, job_type, options=options)


def create_site(session, sessions, tenant, run_job) -> None:
    assert run_job(request(session, tenant).id).status == JobStatus.COMPLETED
    assert read_tenant(sessions, tenant.id).status == TenantStatus.ACTIVE


def test_a_create_makes_the_site_with_its_apps_and_keeps_the_admin_password_only_encrypted(
    session, sessions, tenant_factory, run_job, bench, worker_settings, caplog
):
    caplog.set_level(logging.DEBUG)
    tenant = tenant_factory.create()
    job = run_job(request(session, tenant).id)

    assert job.status == JobStatus.COMPLETED, job.error
    assert read_tenant(sessions, tenant.id).status == TenantStatus.ACTIVE
    config = json.loads((bench.site_dir(tenant) / "site_config.json").read_text())
    assert config["host_name"] == f"https://{bench.site_dir(tenant).name}"
    assert (bench.database(tenant) / "scheduler_enabled").exists()  # System Settings, in the database
    commands = [call[0] if call[0] != "--site" else call[2] for call in bench.calls()]
    assert commands == ["--version", "new-site", "list-apps", "list-apps", "set-config", "enable-scheduler", "list-apps"]
    new_site = next(call for call in bench.calls() if call[0] == "new-site")
    assert new_site[new_site.index("--install-app") + 1] == "erpnext"
    # bench ran with CI set: a line of dots per progress bar, not a line per update of it.
    made = next(step for step in read_steps(sessions, job.id) if step.name == "create_site").output.splitlines()
    assert f"Updating DocTypes for erpnext{'.' * 40}" in made and len(made) < 20
    assert MARIADB_WARNING in made  # real bench's, on stdout, kept for the operator

    stored = read_tenant(sessions, tenant.id).admin_password_encrypted
    password = SiteCredentials(worker_settings.site_credentials_key).decrypt(stored)
    assert bench.administrator_password(tenant) == password  # given to bench's prompt, on stdin
    assert password not in stored and len(password) >= 20
    for secret in (password, ROOT_PASSWORD):
        assert secret not in everything_recorded(sessions, job.id)
        assert secret not in caplog.text
        # Never in bench's arguments: every user of the host sees those in `ps`, and bench writes them to bench.log.
        assert not any(secret in argument for call in bench.calls() for argument in call)


def test_a_failed_new_site_is_retried_from_where_it_failed_after_its_half_made_site_is_removed(
    session, sessions, tenant_factory, run_job, bench, monkeypatch, caplog
):
    tenant = tenant_factory.create()
    monkeypatch.setenv("FAKE_BENCH_FAIL", "new-site")
    monkeypatch.setenv("FAKE_BENCH_EXIT_CODE", "3")
    failed = run_job(request(session, tenant).id)

    assert failed.status == JobStatus.FAILED
    assert "step create_site failed" in failed.error and "exited with 3" in failed.error
    assert "Traceback" in failed.error  # the last lines bench printed, for the operator
    assert ROOT_PASSWORD not in everything_recorded(sessions, failed.id)
    assert read_tenant(sessions, tenant.id).status == TenantStatus.FAILED
    assert bench.site_dir(tenant).exists()  # what the real CLI leaves behind without a terminal

    monkeypatch.delenv("FAKE_BENCH_FAIL")
    calls_before = len(bench.calls())
    retry = committing(session).retry_job(tenant.id, failed.id)
    assert retry.resume_from == "create_site"
    done = run_job(retry.id)

    assert done.status == JobStatus.COMPLETED, done.error
    steps = read_steps(sessions, retry.id)
    # The steps before create_site are the failed job's: the retry skips them, saying so.
    assert [(step.name, step.status) for step in steps[:2]] == [
        ("check_preconditions", StepStatus.SKIPPED),
        ("claim_standby", StepStatus.SKIPPED),
    ]
    assert all(f"job {failed.id}" in step.message for step in steps[:2])
    assert {step.status for step in steps[2:]} == {StepStatus.COMPLETED}
    retried = bench.calls()[calls_before:]
    assert ["--version"] not in retried  # the preconditions were not checked again
    drop = next(call for call in retried if call[0] == "drop-site")
    assert "--force" in drop and "--no-backup" in drop
    assert [call[0] for call in retried].count("new-site") == 1
    assert read_tenant(sessions, tenant.id).status == TenantStatus.ACTIVE
    password = read_tenant(sessions, tenant.id).admin_password_encrypted
    assert password  # the same stored password served both attempts
    assert ROOT_PASSWORD not in caplog.text


def test_a_new_site_whose_app_install_failed_after_listing_it_is_made_again_on_retry(
    session, sessions, tenant_factory, run_job, bench, monkeypatch
):
    """frappe writes an app to the site's installed apps before its after_install hooks run: after
    such a failure list-apps names the app, and the site must still never pass for a made one."""
    tenant = tenant_factory.create()
    monkeypatch.setenv("FAKE_BENCH_AFTER_INSTALL_FAILS", "erpnext")
    failed = run_job(request(session, tenant).id)

    assert failed.status == JobStatus.FAILED and "step create_site failed" in failed.error, failed.error
    site_config = bench.site_dir(tenant) / "site_config.json"
    assert site_config.exists()  # and list-apps would name erpnext

    monkeypatch.delenv("FAKE_BENCH_AFTER_INSTALL_FAILS")
    calls_before = len(bench.calls())
    done = run_job(committing(session).retry_job(tenant.id, failed.id).id)

    assert done.status == JobStatus.COMPLETED, done.error
    retried = [call[0] for call in bench.calls()[calls_before:]]
    assert retried.index("drop-site") < retried.index("new-site")  # the half-made site went first


def test_an_app_install_that_failed_is_installed_again_with_its_hooks_and_never_counted_as_done(
    session, sessions, tenant_factory, run_job, bench, monkeypatch
):
    tenant = tenant_factory.create()
    monkeypatch.setenv("FAKE_BENCH_FAIL", "list-apps")  # the job fails at install_apps, before installing
    failed = run_job(request(session, tenant).id)
    assert failed.status == JobStatus.FAILED and "step install_apps failed" in failed.error, failed.error

    # The retry installs every app again, and this time erpnext's after_install fails: although
    # erpnext is then listed, the job fails.
    monkeypatch.delenv("FAKE_BENCH_FAIL")
    monkeypatch.setenv("FAKE_BENCH_AFTER_INSTALL_FAILS", "erpnext")
    retry = committing(session).retry_job(tenant.id, failed.id)
    assert retry.resume_from == "install_apps"
    still_failed = run_job(retry.id)
    assert still_failed.status == JobStatus.FAILED, still_failed.error
    assert "install_apps" in still_failed.error and "after_install failed" in still_failed.error

    monkeypatch.delenv("FAKE_BENCH_AFTER_INSTALL_FAILS")
    calls_before = len(bench.calls())
    done = run_job(committing(session).retry_job(tenant.id, still_failed.id).id)
    assert done.status == JobStatus.COMPLETED, done.error
    assert ["--site", bench.site_dir(tenant).name, "install-app", "--force", "erpnext"] in bench.calls()[calls_before:]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bench_path": ""}, "BENCH_PATH is not set"),
        ({"bench_path": "/nonexistent/bench"}, "BENCH_PATH: /nonexistent/bench is not a bench directory"),
        ({"executable": "no-such-bench"}, "BENCH_EXECUTABLE: 'no-such-bench'"),
        ({"site_domain": ""}, "SITE_DOMAIN"),
        ({"site_domain": f"{DOMAIN}\n"}, "SITE_DOMAIN"),
        ({"site_domain": f"{DOMAIN}/x"}, "SITE_DOMAIN"),
        ({"db_root_password": ""}, "DB_ROOT_PASSWORD is not set"),
        ({"apps": "erpnext hrms"}, "SITE_APPS: hrms not in"),
        ({"apps": "erpnext ../erpnext"}, "SITE_APPS: '../erpnext' must be"),
        ({"apps": "erpnext,--force"}, "SITE_APPS: '--force' must be"),  # bench would read it as an option
        ({"step_timeout_seconds": "soon"}, "BENCH_STEP_TIMEOUT_SECONDS"),
    ],
)
def test_a_missing_or_wrong_setting_fails_the_first_step_naming_the_setting(
    session, sessions, tenant_factory, run_job, change, message
):
    tenant = tenant_factory.create()
    job = run_job(request(session, tenant).id, **change)

    assert job.status == JobStatus.FAILED
    assert job.error.startswith("step check_preconditions failed: ") and message in job.error
    assert "Traceback" not in job.error
    assert read_tenant(sessions, tenant.id).status == TenantStatus.PENDING  # nothing was made


def test_a_tenant_whose_slug_ends_in_a_newline_gets_no_site_and_no_bench_command(
    session, sessions, tenant_factory, run_job, bench
):
    """A tenant made before slugs were checked whole: its slug must not reach bench or a path."""
    tenant = tenant_factory.create()
    session.execute(update(Tenant).where(Tenant.id == tenant.id).values(slug=f"{tenant.tenant.slug}\n"))
    session.commit()
    job = run_job(request(session, tenant).id)

    assert job.status == JobStatus.FAILED
    assert job.error.startswith("step check_preconditions failed: tenant slug ") and "cannot make a site name" in job.error
    assert bench.calls() == []
    assert [path.name for path in (bench.path / "sites").iterdir() if "\n" in path.name] == []


def test_a_wrong_root_password_fails_create_site_in_one_clear_line_and_the_retry_cleans_the_bare_folder(
    session, sessions, tenant_factory, run_job, bench
):
    tenant = tenant_factory.create()
    failed = run_job(request(session, tenant).id, db_root_password="wrong-password")
    assert failed.status == JobStatus.FAILED
    assert failed.error == (
        "step create_site failed: the database refused the root login of `bench new-site`: "
        "check DB_ROOT_USERNAME (root) and DB_ROOT_PASSWORD"
    )
    create_site = next(step for step in read_steps(sessions, failed.id) if step.name == "create_site")
    assert "Access denied" in create_site.output  # bench's own words, for the operator
    assert "wrong-password" not in everything_recorded(sessions, failed.id)
    assert bench.site_dir(tenant).is_dir()

    retry = committing(session).retry_job(tenant.id, failed.id)
    assert run_job(retry.id).status == JobStatus.COMPLETED


def test_a_backup_records_every_file_with_its_size_and_sha256(session, sessions, tenant_factory, run_job, worker_settings):
    tenant = tenant_factory.create()
    create_site(session, sessions, tenant, run_job)
    job = run_job(request(session, tenant, JobType.BACKUP_SITE).id)

    assert job.status == JobStatus.COMPLETED, job.error
    [backup] = backups_of(sessions, tenant.id)
    assert (backup.status, backup.job_id) == (BackupStatus.COMPLETED, job.id)
    assert sorted(file["kind"] for file in backup.files) == ["config", "database", "private_files", "public_files"]
    for file in backup.files:
        path = Path(file["path"])
        assert path.is_relative_to(worker_settings.backup_path / tenant.tenant.slug / str(job.id))
        assert path.stat().st_size == file["size"] and len(file["sha256"]) == 64
    dump = next(Path(file["path"]) for file in backup.files if file["kind"] == "database")
    assert b"CREATE TABLE" in gzip.decompress(dump.read_bytes())
    assert backup.size == sum(file["size"] for file in backup.files)


@pytest.mark.parametrize(
    "flaw, reason", [("FAKE_BENCH_EMPTY_DUMP", "is empty"), ("FAKE_BENCH_TRUNCATED_DUMP", "not a complete gzip")]
)
def test_a_bad_dump_fails_the_backup_even_though_bench_exited_0(
    session, sessions, tenant_factory, run_job, monkeypatch, flaw, reason
):
    tenant = tenant_factory.create()
    create_site(session, sessions, tenant, run_job)
    monkeypatch.setenv(flaw, "1")
    job = run_job(request(session, tenant, JobType.BACKUP_SITE).id)

    assert job.status == JobStatus.FAILED
    assert job.error.startswith("step verify_backup failed: the backup is not usable") and reason in job.error
    [backup] = backups_of(sessions, tenant.id)
    assert backup.status == BackupStatus.FAILED and reason in backup.error
    assert not any(Path(file["path"]).exists() for file in backup.files)
    assert read_tenant(sessions, tenant.id).status == TenantStatus.ACTIVE

    # The retry takes the backup again: checking the same bad files again could never pass.
    monkeypatch.delenv(flaw)
    retry = committing(session).retry_job(tenant.id, job.id)
    assert retry.resume_from is None  # redone from run_backup, the first step: the retry starts over
    assert run_job(retry.id).status == JobStatus.COMPLETED
    assert [backup.status for backup in backups_of(sessions, tenant.id)] == [BackupStatus.FAILED, BackupStatus.COMPLETED]


def test_a_delete_takes_a_verified_final_backup_then_archives_the_site(session, sessions, tenant_factory, run_job, bench):
    tenant = tenant_factory.create()
    create_site(session, sessions, tenant, run_job)
    job = run_job(request(session, tenant, JobType.DELETE_SITE).id)

    assert job.status == JobStatus.COMPLETED, job.error
    assert read_tenant(sessions, tenant.id).status == TenantStatus.DELETED
    assert read_tenant(sessions, tenant.id).admin_password_encrypted is None
    assert not bench.site_dir(tenant).exists()
    assert (bench.path / "archived" / "sites" / bench.site_dir(tenant).name).is_dir()
    [backup] = backups_of(sessions, tenant.id)
    assert (backup.status, backup.job_id) == (BackupStatus.COMPLETED, job.id)
    assert all(Path(file["path"]).exists() for file in backup.files)  # outside the archived site folder
    drop = next(call for call in bench.calls() if call[0] == "drop-site")
    assert "--no-backup" in drop  # ours was taken and verified; bench's own would be a second one


def test_a_delete_asked_for_no_final_backup_skips_it(session, sessions, tenant_factory, run_job, bench):
    tenant = tenant_factory.create()
    create_site(session, sessions, tenant, run_job)
    job = run_job(request(session, tenant, JobType.DELETE_SITE, skip_final_backup=True).id)

    assert job.status == JobStatus.COMPLETED, job.error
    steps = {step.name: step.status for step in read_steps(sessions, job.id)}
    assert steps["final_backup"] == steps["verify_backup"] == steps["copy_offsite"] == StepStatus.SKIPPED
    assert backups_of(sessions, tenant.id) == []
    assert not bench.site_dir(tenant).exists()


def test_a_delete_of_a_site_that_was_never_made_says_how_to_finish_it(session, sessions, tenant_factory, run_job, bench):
    tenant = tenant_factory.create(status=TenantStatus.FAILED)
    job = run_job(request(session, tenant, JobType.DELETE_SITE).id)
    assert job.status == JobStatus.FAILED and "skip_final_backup" in job.error

    job = run_job(request(session, tenant, JobType.DELETE_SITE, skip_final_backup=True).id)
    assert job.status == JobStatus.COMPLETED, job.error
    assert read_tenant(sessions, tenant.id).status == TenantStatus.DELETED


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting for a parent that never reaps it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def hanging_pids(pid_file: Path) -> list[int] | None:
    pids = pid_file.read_text().split() if pid_file.exists() else []
    return [int(pid) for pid in pids] if len(pids) == 2 else None


def test_a_cancel_stops_a_hanging_create_kills_its_whole_process_tree_and_removes_the_half_made_site(
    session, sessions, tenant_factory, run_job, bench, monkeypatch, tmp_path
):
    pid_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_BENCH_HANG", "new-site")
    monkeypatch.setenv("FAKE_BENCH_PID_FILE", str(pid_file))
    monkeypatch.setenv("FAKE_BENCH_IGNORE_TERM", "1")  # SIGTERM is not enough: SIGKILL must follow
    tenant = tenant_factory.create()
    job = request(session, tenant)
    runner = threading.Thread(target=run_job, args=(job.id,), daemon=True)
    runner.start()

    pids = wait_for(lambda: hanging_pids(pid_file), timeout=30, what="bench and its child to start")
    assert all(alive(pid) for pid in pids)
    bench.site_dir(tenant).mkdir()  # what new-site has made so far: the folder and its config
    (bench.site_dir(tenant) / "site_config.json").write_text('{"db_name": "_half_made"}')
    committing(session).cancel_job(tenant.id, job.id)
    runner.join(timeout=30)

    assert read_job(sessions, job.id).status == JobStatus.CANCELLED
    assert not any(alive(pid) for pid in pids)
    assert not bench.site_dir(tenant).exists()
    assert read_tenant(sessions, tenant.id).status == TenantStatus.PENDING
    step = next(step for step in read_steps(sessions, job.id) if step.name == "create_site")
    assert step.status == StepStatus.CANCELLED
    assert any(call[0] == "drop-site" and "--force" in call for call in bench.calls())  # the clean-up ran to its end


class Flagged:
    """A create_site step's StepContext whose stop flags the test sets, as the heartbeat would."""

    job_type = JobType.CREATE_SITE
    tenant_slug = "acme"
    options: dict = {}

    def __init__(self):
        self.job_id = uuid.uuid4()
        self.flags = StopFlags()

    def should_stop(self) -> bool:
        return self.flags.should_stop()

    def must_stop(self) -> str | None:
        return self.flags.must_stop()

    def admin_password(self) -> str:
        return "Admin-Secret-1"


@pytest.mark.parametrize(
    "flag, stopped_by",
    [("cancelled", StepStopped), ("taken_away", StepTerminated)],
    ids=["cancel", "job-taken-away"],
)
def test_a_step_stopped_by_its_flags_kills_its_commands_whole_process_group_and_leaves_no_process(
    bench, bench_settings, monkeypatch, tmp_path, flag, stopped_by
):
    pid_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_BENCH_HANG", "new-site")
    monkeypatch.setenv("FAKE_BENCH_PID_FILE", str(pid_file))
    monkeypatch.setenv("FAKE_BENCH_IGNORE_TERM", "1")  # bench itself outlives SIGTERM: SIGKILL must follow
    context, raised = Flagged(), []

    def step():
        try:
            BenchDriver(bench_settings).run_step("create_site", context)
        except BaseException as error:
            raised.append(error)

    runner = threading.Thread(target=step, daemon=True)
    runner.start()
    pids = wait_for(lambda: hanging_pids(pid_file), timeout=30, what="bench and its child to start")
    asked = time.monotonic()
    getattr(context.flags, flag).set()
    runner.join(timeout=30)

    assert time.monotonic() - asked < TERMINATE_GRACE_SECONDS + 5
    [error] = raised
    assert type(error) is stopped_by
    assert stopped_by is StepStopped or str(error) == TAKEN_AWAY
    assert not any(alive(pid) for pid in pids), "no process of the command is left behind"


def test_a_bench_that_ends_without_reading_its_answers_is_judged_by_its_exit_code_not_the_broken_pipe(bench_settings):
    """More than a pipe holds, to a command that reads none of it: the write meets a closed pipe."""
    config = BenchConfig.check(bench_settings)
    command = Command(config, ["--version"], ["x" * 200_000], Flagged(), time.monotonic() + 30)

    assert command.run() == 0
    assert command.stdout == ["5.31.1"]


def test_a_cancel_before_create_site_leaves_an_existing_site_alone(session, sessions, tenant_factory, run_job, bench):
    """A failed tenant may still have its site (a delete that failed): a create cancelled early made nothing to undo."""
    tenant = tenant_factory.create()
    create_site(session, sessions, tenant, run_job)
    tenant_factory.set_status(tenant.tenant, TenantStatus.FAILED)
    running = request(session, tenant)

    class CancelsInPreconditions(BenchDriver):
        def run_step(self, step, context):
            committing(session).cancel_job(tenant.id, running.id)
            raise StepStopped(step)

    run_job(running.id, driver_class=CancelsInPreconditions)

    assert read_job(sessions, running.id).status == JobStatus.CANCELLED
    assert read_job(sessions, running.id).message == "Cancelled before it changed anything"
    assert (bench.site_dir(tenant) / "site_config.json").exists()
    assert "drop-site" not in [call[0] for call in bench.calls()]


def test_a_step_that_runs_past_its_timeout_fails_saying_so_and_leaves_no_process(
    session, sessions, tenant_factory, run_job, monkeypatch, tmp_path
):
    pid_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_BENCH_HANG", "new-site")
    monkeypatch.setenv("FAKE_BENCH_PID_FILE", str(pid_file))
    tenant = tenant_factory.create()
    job = run_job(request(session, tenant).id, step_timeout_seconds="1")

    assert job.status == JobStatus.FAILED
    assert "timed out after 1s (BENCH_STEP_TIMEOUT_SECONDS)" in job.error and "step create_site" in job.error
    assert not any(alive(pid) for pid in hanging_pids(pid_file))


def test_a_real_worker_on_the_bench_driver_creates_backs_up_and_deletes_with_no_secret_in_any_log_or_answer(
    isolated, bench, bench_settings, tmp_path
):
    """Settings alone choose the driver: a worker started with SITE_DRIVER=bench runs the fake bench."""
    environment = {
        **isolated.environment,
        "SITE_DRIVER": "bench",
        "BENCH_PATH": bench_settings.bench_path,
        "BENCH_EXECUTABLE": bench_settings.executable,
        "SITE_DOMAIN": DOMAIN,
        "DB_ROOT_PASSWORD": ROOT_PASSWORD,
        "BACKUP_PATH": str(tmp_path / "backups"),
        "FAKE_BENCH_LOG": str(bench.calls_log),
        "FAKE_BENCH_DB_ROOT_PASSWORD": ROOT_PASSWORD,
    }
    app = create_app(isolated.settings)
    app.test_client_class = StrictClient
    client = app.test_client()
    with isolated.session() as session:
        tenant = TenantFactory(session).create()
    worker = WorkerProcess(environment, isolated.dispatcher, concurrency=1)
    answers = []

    def run(job_type: str) -> dict:
        response = client.post("/api/v1/provisioning/jobs", json={"job_type": job_type}, headers=tenant.headers())
        assert response.status_code == 201, response.json
        job_id = response.json["data"]["id"]

        def finished():
            answer = client.get(f"/api/v1/provisioning/jobs/{job_id}", headers=tenant.headers())
            return answer.json["data"]["status"] in ("completed", "failed") and answer

        job = wait_for(finished, timeout=60, what=f"{job_type} to finish").json["data"]
        steps = client.get(f"/api/v1/provisioning/jobs/{job_id}/steps", headers=tenant.headers())
        events = client.get(f"/api/v1/provisioning/jobs/{job_id}/events", headers=tenant.headers())
        answers.extend([response.get_data(as_text=True), steps.get_data(as_text=True), events.get_data(as_text=True)])
        assert job["status"] == "completed", job
        return job

    try:
        run("create_site")
        password = client.post("/api/v1/tenants/current/admin-password", headers=tenant.headers()).json["data"]["password"]
        run("backup_site")
        answers.append(client.get("/api/v1/provisioning/backups", headers=tenant.headers()).get_data(as_text=True))
        run("delete_site")
    finally:
        worker.stop()
    log = worker.output()

    assert f"running bench new-site {tenant.tenant.slug}.{DOMAIN}" in log
    assert [call[0] for call in bench.calls()].count("drop-site") == 1
    for secret in (password, ROOT_PASSWORD):
        assert secret not in log
        assert not any(secret in answer for answer in answers)


def test_a_backups_files_and_folders_are_readable_by_the_services_user_alone_whatever_bench_made(
    session, sessions, tenant_factory, run_job, worker_settings
):
    """The dump and the site config (its database password in it) as bench wrote them were 0644 in 0755 folders."""
    tenant = tenant_factory.create()
    create_site(session, sessions, tenant, run_job)
    job = run_job(request(session, tenant, JobType.BACKUP_SITE).id)

    assert job.status == JobStatus.COMPLETED, job.error
    assert len(backups_of(sessions, tenant.id)[0].files) == 4
    assert not_private(worker_settings.backup_path) == {}


def run_bench(bench: Bench, *args: str, answers: str = "") -> subprocess.CompletedProcess:
    """The fake run as the driver runs bench: in the bench, with CI set, its passwords on stdin."""
    return subprocess.run(
        [str(FAKE_BENCH), *args], cwd=bench.path, input=answers, capture_output=True, text=True, env={**os.environ, "CI": "1"}
    )


def new_site(bench: Bench, site: str, *apps: str) -> None:
    made = run_bench(bench, "new-site", site, *[arg for app in apps for arg in ("--install-app", app)],
                     answers=f"{ROOT_PASSWORD}\nAdmin-1\nAdmin-1\n")  # fmt: skip
    assert made.returncode == 0, made.stderr


def site_backup(bench: Bench, site: str, folder: Path) -> dict[str, Path]:
    """A backup with files of ``site`` into ``folder``: its files as its summary names them ("Public  : <path> 1.0KiB")."""
    taken = run_bench(bench, "--site", site, "backup", "--with-files", "--compress", "--backup-path", str(folder))
    assert taken.returncode == 0, taken.stderr
    named = [line.split(":", 1) for line in taken.stdout.splitlines() if ":" in line and not line.startswith("Backup")]
    return {label.strip(): Path(rest.split()[0]) for label, rest in named}


def tables_of(bench: Bench, site: str) -> list[str]:
    listed = run_bench(bench, "--site", site, "execute", "frappe.db.get_tables")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_the_fakes_get_tables_lists_the_tables_its_dump_creates(bench, tmp_path):
    """What a restore is checked against: the tables a site had when its dump was taken."""
    new_site(bench, "source.test", "erpnext")
    dump = site_backup(bench, "source.test", tmp_path / "backup")["Database"]

    lines = gzip.decompress(dump.read_bytes()).decode().splitlines()
    created = [line.split("`")[1] for line in lines if line.startswith("CREATE TABLE")]
    assert sorted(tables_of(bench, "source.test")) == created
    assert {"tabInstalled Application", "__Auth", "tabCompany"} <= set(created)


def test_the_fakes_restore_makes_the_sites_database_again_from_the_dump_and_unpacks_its_files(bench, tmp_path):
    """A restore job will judge a restored site by what it then lists: the dump's apps and tables,
    not the ones the site had, and the files of the tars in the site's folder."""
    new_site(bench, "source.test", "erpnext")
    (bench.path / "sites" / "source.test" / "public" / "files").mkdir(parents=True)
    (bench.path / "sites" / "source.test" / "public" / "files" / "logo.png").write_text("png")
    backup = site_backup(bench, "source.test", tmp_path / "backup")
    new_site(bench, "target.test")  # frappe alone
    assert run_bench(bench, "--site", "target.test", "enable-scheduler").returncode == 0

    files = ["--with-public-files", str(backup["Public"]), "--with-private-files", str(backup["Private"])]
    restored = run_bench(bench, "--site", "target.test", "restore", str(backup["Database"]), *files,
                         "--db-root-username", "root", answers=f"{ROOT_PASSWORD}\n")  # fmt: skip

    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.splitlines() == [
        MARIADB_WARNING, "App frappe already installed",
        "*** Scheduler is enabled ***",  # as the site had it before, whatever the dump's site had
        "Site target.test has been restored with files",
    ]  # fmt: skip
    assert restored.stderr.endswith("MySQL root password: ")  # asked on stdin, not given
    listed = run_bench(bench, "--site", "target.test", "list-apps", "-f", "json")
    assert json.loads(listed.stdout) == {"target.test": ["frappe", "erpnext"]}
    assert tables_of(bench, "target.test") == sorted(tables_of(bench, "source.test"))  # in the dump's order
    assert (bench.path / "sites" / "target.test" / "public" / "files" / "logo.png").read_text() == "png"
    assert not list((bench.path / "sites" / "target.test").glob("*.tgz"))  # the tars' copies are removed


def test_the_fakes_restore_that_dies_during_the_import_leaves_a_half_restored_site(bench, tmp_path, monkeypatch):
    """As a real import that dies: the site's database was already dropped and made again, with
    only part of the dump in it, so the site no longer answers list-apps."""
    new_site(bench, "source.test", "erpnext")
    dump = site_backup(bench, "source.test", tmp_path / "backup")["Database"]
    new_site(bench, "target.test")
    monkeypatch.setenv("FAKE_BENCH_FAIL", "restore")

    failed = run_bench(bench, "--site", "target.test", "restore", str(dump), answers=f"{ROOT_PASSWORD}\n")

    assert failed.returncode == 1
    assert failed.stdout.splitlines()[-1] == "Command failed" and "Lost connection" in failed.stdout
    half = tables_of(bench, "target.test")
    assert 0 < len(half) < len(tables_of(bench, "source.test"))
    listed = run_bench(bench, "--site", "target.test", "list-apps", "-f", "json")
    assert listed.returncode == 1 and "tabSingles' doesn't exist" in listed.stderr and listed.stdout == ""


def installed(bench: Bench, tenant) -> list[str]:
    listed = run_bench(bench, "--site", bench.site_dir(tenant).name, "list-apps", "-f", "json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)[bench.site_dir(tenant).name]


def add_table(bench: Bench, tenant, table: str) -> None:
    """A table made in the site's database (by its users, say), as the fake keeps its tables."""
    tables = bench.database(tenant) / "tables.json"
    tables.write_text(json.dumps([*json.loads(tables.read_text()), table]))


def maintenance_mode(bench: Bench, tenant) -> int:
    return json.loads((bench.site_dir(tenant) / "site_config.json").read_text()).get("maintenance_mode", 0)


def tables_of_site(bench: Bench, tenant) -> list[str]:
    return tables_of(bench, bench.site_dir(tenant).name)


def backed_up(session, sessions, tenant, run_job, bench: Bench) -> SiteBackup:
    """A site, backed up, with a table made after the backup (what a restore undoes)."""
    create_site(session, sessions, tenant, run_job)
    job = run_job(request(session, tenant, JobType.BACKUP_SITE).id)
    assert job.status == JobStatus.COMPLETED, job.error
    add_table(bench, tenant, "after_the_backup")
    [backup] = backups_of(sessions, tenant.id)
    return backup


def test_a_restore_on_bench_brings_the_backup_back_after_a_safety_backup_with_the_root_password_on_stdin_only(
    session, sessions, tenant_factory, run_job, bench
):
    tenant = tenant_factory.create()
    backup = backed_up(session, sessions, tenant, run_job, bench)

    job = run_job(request(session, tenant, JobType.RESTORE_SITE, backup_id=str(backup.id)).id)

    assert job.status == JobStatus.COMPLETED, job.error
    assert "after_the_backup" not in tables_of_site(bench, tenant)  # as it was backed up
    assert installed(bench, tenant) == ["frappe", "erpnext"]
    commands = [" ".join(call[2:4]) for call in bench.calls() if call[:2] == ["--site", bench.site_dir(tenant).name]]
    closed = commands.index("set-maintenance-mode on")
    after = commands[closed:]  # the restore job's, in order
    names = [command.split()[0] for command in after]
    assert names.index("backup") < names.index("restore") < names.index("migrate") < after.index("set-maintenance-mode off")
    assert maintenance_mode(bench, tenant) == 0
    restore_call = next(call for call in bench.calls() if "restore" in call)
    assert restore_call[3] == next(file["path"] for file in backup.files if file["kind"] == "database")
    assert {"--with-public-files", "--with-private-files"} <= set(restore_call)
    assert any("migrate" in call for call in bench.calls())
    assert not any(ROOT_PASSWORD in argument for call in bench.calls() for argument in call)
    safety = [found for found in backups_of(sessions, tenant.id) if found.job_id == job.id]
    assert [found.status for found in safety] == [BackupStatus.COMPLETED]


def test_a_restore_whose_import_dies_half_way_puts_the_site_back_and_a_lost_connection_is_not_the_backups_fault(
    session, sessions, tenant_factory, run_job, bench, monkeypatch
):
    tenant = tenant_factory.create()
    backup = backed_up(session, sessions, tenant, run_job, bench)
    monkeypatch.setenv("FAKE_BENCH_FAIL", "restore")  # the import dies: "Lost connection to server during query"

    class ThenRestoresWell(BenchDriver):
        """The database is back: putting the site back from the safety backup works."""

        def undo(self, context):
            monkeypatch.delenv("FAKE_BENCH_FAIL")
            return super().undo(context)

    job = run_job(request(session, tenant, JobType.RESTORE_SITE, backup_id=str(backup.id)).id, driver_class=ThenRestoresWell)

    assert job.status == JobStatus.FAILED
    assert job.error.startswith("step restore_site failed: `bench --site") and "Lost connection" in job.error
    assert job.error.endswith("; the site was put back as it was before the job")
    assert "after_the_backup" in tables_of_site(bench, tenant)  # as it was before the job, answering
    assert installed(bench, tenant) == ["frappe", "erpnext"] and maintenance_mode(bench, tenant) == 0
    assert read_tenant(sessions, tenant.id).status == TenantStatus.ACTIVE
    with sessions() as reading:
        assert reading.get(SiteBackup, backup.id).restore_failed_at is None


def test_a_restore_refused_the_root_login_changed_nothing_and_leaves_the_tenant_active(
    session, sessions, tenant_factory, run_job, bench
):
    """frappe asks the root password before it drops anything: nothing to put back, nothing to blame the backup for."""
    tenant = tenant_factory.create()
    backup = backed_up(session, sessions, tenant, run_job, bench)

    job = run_job(request(session, tenant, JobType.RESTORE_SITE, backup_id=str(backup.id)).id, db_root_password="wrong-password")

    assert job.error == (
        "step restore_site failed: the database refused the root login of `bench restore`: "
        "check DB_ROOT_USERNAME (root) and DB_ROOT_PASSWORD"
    )
    assert read_tenant(sessions, tenant.id).status == TenantStatus.ACTIVE
    assert "after_the_backup" in tables_of_site(bench, tenant) and maintenance_mode(bench, tenant) == 0
    assert sum("restore" in call for call in bench.calls()) == 1  # no put-back
    with sessions() as reading:
        assert reading.get(SiteBackup, backup.id).restore_failed_at is None


def written_wrong(session, tenant, backup: SiteBackup, folder: Path) -> SiteBackup:
    """A completed backup of the tenant whose dump passes the platform's checks (gzip, SQL, its end)
    but has a line that is no SQL, after its first table: its import fails half-way."""
    dump = next(Path(file["path"]) for file in backup.files if file["kind"] == "database")
    lines = gzip.decompress(dump.read_bytes()).decode().splitlines(keepends=True)
    first_table = next(number for number, line in enumerate(lines) if line.startswith("CREATE TABLE"))
    lines.insert(first_table + 1, "THIS IS NOT SQL;\n")
    folder.mkdir(parents=True)
    (folder / dump.name).write_bytes(gzip.compress("".join(lines).encode()))
    book = BackupBook(session)
    wrong = book.start(tenant.id, None, backup.site, [BackupFile("database", folder / dump.name)])
    book.verify(wrong)
    return wrong


def test_a_drill_on_bench_proves_the_backup_in_a_scratch_site_and_leaves_nothing_of_it(
    session, sessions, tenant_factory, run_job, bench
):
    tenant = tenant_factory.create()
    backup = backed_up(session, sessions, tenant, run_job, bench)
    databases = set((bench.path / "fake-mariadb").iterdir())

    job = run_job(request(session, tenant, JobType.RESTORE_DRILL).id)

    assert job.status == JobStatus.COMPLETED, job.error
    scratch = f"{tenant.tenant.slug}.drill.{DOMAIN}"
    assert [call[:2] for call in bench.calls() if scratch in call][:2] == [["new-site", scratch], ["--site", scratch]]
    assert ["--site", scratch, "execute", "frappe.db.get_tables"] in bench.calls()
    assert f"answered with all {len(tables_of_dump(backup))} tables of the dump" in read_steps(sessions, job.id)[1].output
    assert not (bench.path / "sites" / scratch).exists() and set((bench.path / "fake-mariadb").iterdir()) == databases
    assert not any((bench.path / "archived" / "sites" / "drills").iterdir())
    with sessions() as reading:
        assert reading.get(SiteBackup, backup.id).restore_proven_at is not None
    assert "after_the_backup" in tables_of_site(bench, tenant)  # the tenant's own site untouched


def test_a_drill_of_a_dump_the_import_refuses_marks_the_backup_and_still_drops_its_scratch_site(
    session, sessions, tenant_factory, run_job, bench, tmp_path
):
    tenant = tenant_factory.create()
    wrong = written_wrong(session, tenant, backed_up(session, sessions, tenant, run_job, bench), tmp_path / "wrong")

    job = run_job(request(session, tenant, JobType.RESTORE_DRILL, backup_id=str(wrong.id)).id)

    assert job.status == JobStatus.FAILED and "bench could not restore the backup" in job.error and "ERROR 1064" in job.error
    assert job.error.endswith("; its scratch site was dropped")
    assert not (bench.path / "sites" / f"{tenant.tenant.slug}.drill.{DOMAIN}").exists()
    with sessions() as reading:
        assert "ERROR 1064" in reading.get(SiteBackup, wrong.id).restore_error
    assert read_tenant(sessions, tenant.id).status == TenantStatus.ACTIVE


def test_a_drill_that_runs_out_of_time_drops_its_scratch_site_all_the_same_and_does_not_blame_the_backup(
    session, sessions, tenant_factory, run_job, bench, monkeypatch
):
    tenant = tenant_factory.create()
    backup = backed_up(session, sessions, tenant, run_job, bench)
    monkeypatch.setenv("FAKE_BENCH_HANG", "restore")

    job = run_job(request(session, tenant, JobType.RESTORE_DRILL).id, step_timeout_seconds="3")

    assert job.status == JobStatus.FAILED and "timed out after 3s (BENCH_STEP_TIMEOUT_SECONDS)" in job.error, job.error
    assert not (bench.path / "sites" / f"{tenant.tenant.slug}.drill.{DOMAIN}").exists()
    assert not any((bench.path / "archived" / "sites" / "drills").iterdir())
    with sessions() as reading:
        assert reading.get(SiteBackup, backup.id).restore_failed_at is None


def test_a_drill_cancelled_during_its_restore_stops_it_and_leaves_no_scratch_site_or_copy(
    session, sessions, tenant_factory, run_job, bench, monkeypatch, tmp_path
):
    tenant = tenant_factory.create()
    backup = backed_up(session, sessions, tenant, run_job, bench)
    pid_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_BENCH_HANG", "restore")
    monkeypatch.setenv("FAKE_BENCH_PID_FILE", str(pid_file))
    job = request(session, tenant, JobType.RESTORE_DRILL)
    runner = threading.Thread(target=run_job, args=(job.id,), daemon=True)
    runner.start()

    pids = wait_for(lambda: hanging_pids(pid_file), timeout=30, what="the drill's restore to start")
    committing(session).cancel_job(tenant.id, job.id)
    runner.join(timeout=60)

    assert read_job(sessions, job.id).status == JobStatus.CANCELLED
    assert not any(alive(pid) for pid in pids)
    assert not (bench.path / "sites" / f"{tenant.tenant.slug}.drill.{DOMAIN}").exists()
    assert not any((bench.path / "archived" / "sites" / "drills").iterdir())
    with sessions() as reading:
        assert reading.get(SiteBackup, backup.id).restore_failed_at is None  # a cancel is nobody's verdict


def tables_of_dump(backup: SiteBackup) -> list[str]:
    dump = next(Path(file["path"]) for file in backup.files if file["kind"] == "database")
    lines = gzip.decompress(dump.read_bytes()).decode().splitlines()
    return [line.split("`")[1] for line in lines if line.startswith("CREATE TABLE")]
