"""The simulated site driver: timing, failure on demand, stopping on cancel, and real backup files."""

import gzip
import time
import uuid

import pytest

from provisioning.backups.book import BackupInvalid, describe, verify
from provisioning.enums import JobType
from provisioning.errors import StepFailed, StepStopped, StepTerminated
from provisioning.jobs.step_interruptions import GRACE_OVER
from provisioning.sites.drivers.simulated import SimulatedDriver


class Context:
    """A StepContext that keeps what the driver reports, and stops after ``calls`` questions;
    ``must_stop`` gives ``terminate`` once set."""

    def __init__(self, tmp_path, calls: int | None = None, job_type: JobType = JobType.CREATE_SITE):
        self.job_id = uuid.uuid4()
        self.job_type = job_type
        self.tenant_slug = "acme"
        self.options = {}
        self.remaining = calls
        self.directory = tmp_path
        self.backups = []
        self.passwords_asked = 0
        self.terminate: str | None = None

    def should_stop(self) -> bool:
        if self.remaining is None:
            return False
        self.remaining -= 1
        return self.remaining < 0

    def must_stop(self) -> str | None:
        return self.terminate

    def admin_password(self) -> str:
        self.passwords_asked += 1
        return "not-a-real-password"

    def backup_directory(self):
        return self.directory

    def record_backup(self, site, files):
        self.backups.append((site, files))


def test_a_zero_second_step_succeeds_at_once_and_says_what_it_did(tmp_path):
    context = Context(tmp_path)
    output = SimulatedDriver(step_seconds=0).run_step("create_site", context)
    assert "create_site" in output and "acme" in output
    assert context.passwords_asked == 1


def test_the_step_named_to_fail_fails_with_a_message_naming_it(tmp_path):
    driver = SimulatedDriver(step_seconds=0, fail_step="install_apps")
    driver.run_step("create_site", Context(tmp_path))
    with pytest.raises(StepFailed, match="install_apps"):
        driver.run_step("install_apps", Context(tmp_path))


def test_a_long_step_stops_soon_after_it_is_asked_to(tmp_path):
    started = time.monotonic()
    with pytest.raises(StepStopped):
        SimulatedDriver(step_seconds=60).run_step("create_site", Context(tmp_path, calls=3))
    assert time.monotonic() - started < 5


def test_a_step_that_ignores_cancels_runs_on_when_asked_and_stops_only_when_it_must(tmp_path):
    """SIMULATED_IGNORE_CANCEL: the step is deaf to a cancel, as a hung command; the cancel's grace
    period (or the job taken away) still ends it, as its driver would kill a command."""
    cancelled = Context(tmp_path, calls=0)  # should stop, from the first question on
    assert "create_site" in SimulatedDriver(step_seconds=0.2, ignore_cancel=True).run_step("create_site", cancelled)

    told = Context(tmp_path, calls=0)
    told.terminate = GRACE_OVER
    started = time.monotonic()
    with pytest.raises(StepTerminated, match="grace period"):
        SimulatedDriver(step_seconds=60, ignore_cancel=True).run_step("create_site", told)
    assert time.monotonic() - started < 5


def test_a_simulated_backup_is_a_real_gzip_sql_dump_reported_to_the_platform(tmp_path):
    context = Context(tmp_path, job_type=JobType.BACKUP_SITE)
    SimulatedDriver(step_seconds=0).run_step("run_backup", context)
    [(site, files)] = context.backups
    dump = next(file.path for file in files if file.kind == "database")
    assert site == "acme" and "CREATE TABLE" in gzip.decompress(dump.read_bytes()).decode()


def test_told_to_fail_verify_backup_it_writes_a_dump_cut_short_which_the_platforms_check_refuses(tmp_path):
    (tmp_path / "whole").mkdir(), (tmp_path / "cut").mkdir()
    whole, cut = (Context(tmp_path / name, job_type=JobType.BACKUP_SITE) for name in ("whole", "cut"))
    SimulatedDriver(step_seconds=0, fail_step="verify_backup").run_step("install_apps", whole)  # other steps run as usual
    SimulatedDriver(step_seconds=0).run_step("run_backup", whole)
    output = SimulatedDriver(step_seconds=0, fail_step="verify_backup").run_step("run_backup", cut)

    verify(describe(whole.backups[0][1]))
    with pytest.raises(BackupInvalid, match="stops before its end"):
        verify(describe(cut.backups[0][1]))
    assert "verify_backup" in output
