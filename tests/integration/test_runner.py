"""The worker's job runner on real PostgreSQL: steps, progress, failures, cancels and duplicates."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from provisioning.backups.book import retention_of
from provisioning.backups.steps import BackupSteps
from provisioning.enums import BackupStatus, JobStatus, JobType, StepStatus, TenantStatus
from provisioning.errors import StepStopped
from provisioning.jobs.execution import JobExecution
from provisioning.jobs.records import StepRecord
from provisioning.jobs.runner import JobRunner
from provisioning.jobs.workflows import SKIP_FINAL_BACKUP, workflow_for
from provisioning.models import ProvisioningJob, SiteBackup
from provisioning.platform.db import utcnow
from provisioning.platform.settings import BenchSettings
from provisioning.sites.credentials import SiteCredentials
from provisioning.sites.drivers.bench import BenchDriver
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.helpers import committing, wait_for
from tests.records import create_stopped_at, made_without_a_standby_site, read_job, read_steps, read_tenant, tenant_status
from tests.stack import WorkerProcess


def unpublished_job(session, tenant_id, job_type=JobType.CREATE_SITE) -> ProvisioningJob:
    """A pending job no worker will receive, so the test's runner is the only one to run it."""
    return committing(session).request_job(tenant_id, job_type)


class CancelsAt(SimulatedDriver):
    """Quick steps that never ask whether to stop; the one named ``step`` calls ``cancel`` first."""

    def __init__(self, step: str, cancel):
        super().__init__(step_seconds=0)
        self.step, self.cancel = step, cancel

    def run_step(self, step, context):
        if step == self.step:
            self.cancel()
        context.should_stop = lambda: False
        return super().run_step(step, context)


class CancelsAtPlatformStep(BackupSteps):
    """The platform's own backup steps; the one named ``step`` calls ``cancel`` first."""

    def __init__(self, sessions, settings, step: str, cancel):
        super().__init__(sessions, retention_of(settings))
        self.step, self.cancel = step, cancel

    def run(self, step, job_id, tenant_id, options):
        if step == self.step:
            self.cancel()
        return super().run(step, job_id, tenant_id, options)


class Undoes(SimulatedDriver):
    """Quick steps that count the clean-ups a cancel asks for."""

    def __init__(self, step_seconds: float = 0):
        super().__init__(step_seconds)
        self.undone = 0

    def undo(self, context):
        self.undone += 1
        return super().undo(context)


def run_in_background(job_runner: JobRunner, job_id) -> threading.Thread:
    thread = threading.Thread(target=job_runner.run, args=(job_id,), daemon=True)
    thread.start()
    return thread


def test_a_create_runs_every_step_in_order_and_activates_the_tenant(session, sessions, tenant_factory, runner):
    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)

    runner().run(job.id)

    finished = read_job(sessions, job.id)
    assert (finished.status, finished.progress, finished.error) == (JobStatus.COMPLETED, 100, None)
    assert finished.worker == "test-runner@localhost"
    assert finished.started_at <= finished.completed_at
    steps = read_steps(sessions, job.id)
    assert [step.name for step in steps] == list(workflow_for(JobType.CREATE_SITE).step_names)
    ran = made_without_a_standby_site(steps)  # no standby site was ready: the site was made
    assert all(step.status == StepStatus.COMPLETED and step.output for step in ran)
    assert all(a.finished_at <= b.started_at for a, b in zip(ran, ran[1:]))
    assert tenant_status(sessions, tenant.id) == TenantStatus.ACTIVE


def test_a_failing_step_fails_the_job_with_its_name_and_keeps_what_came_before(session, sessions, tenant_factory, runner):
    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)

    runner(fail_step="install_apps").run(job.id)

    failed = read_job(sessions, job.id)
    assert failed.status == JobStatus.FAILED
    assert "install_apps" in failed.error
    create = workflow_for(JobType.CREATE_SITE)
    assert failed.progress == create.progress_after(create.position_of("install_apps"))  # as it was when install_apps started
    statuses = {step.name: step.status for step in read_steps(sessions, job.id)}
    assert statuses == create_stopped_at("install_apps", StepStatus.FAILED)
    assert tenant_status(sessions, tenant.id) == TenantStatus.FAILED


def test_a_job_that_fails_as_it_completes_keeps_its_last_step_completed_and_says_why(
    session, sessions, tenant_factory, runner, monkeypatch
):
    """Its completion's write raised (an outage past the runner's patience, a time limit): every
    step did complete, so none is on record as failed, nor will a retry take one for undone."""

    def completion_fails(*_args, **_kwargs):
        raise RuntimeError("the completion could not be written")

    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    monkeypatch.setattr(JobExecution, "complete_job", completion_fails)
    with pytest.raises(RuntimeError):
        runner().run(job.id)

    failed = read_job(sessions, job.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error == "stopped outside a step: RuntimeError: the completion could not be written"
    assert {step.status for step in made_without_a_standby_site(read_steps(sessions, job.id))} == {StepStatus.COMPLETED}


def test_a_retry_of_a_failed_create_is_a_new_job_that_completes_and_the_old_one_keeps_its_history(
    session, sessions, tenant_factory, runner
):
    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    runner(fail_step="configure_site").run(job.id)

    retry = committing(session).retry_job(tenant.id, job.id)
    runner().run(retry.id)

    assert retry.id != job.id and retry.retry_of_id == job.id
    assert read_job(sessions, retry.id).status == JobStatus.COMPLETED
    old = read_job(sessions, job.id)
    assert (old.status, "configure_site" in old.error) == (JobStatus.FAILED, True)
    assert tenant_status(sessions, tenant.id) == TenantStatus.ACTIVE


def test_the_site_password_is_stored_when_the_create_starts_and_its_retry_keeps_it(session, sessions, tenant_factory, runner):
    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    runner(fail_step="check_preconditions").run(job.id)  # failed before any step asked for the password
    first = read_tenant(sessions, tenant.id).admin_password_encrypted

    retry = committing(session).retry_job(tenant.id, job.id)
    runner().run(retry.id)

    assert read_job(sessions, retry.id).status == JobStatus.COMPLETED
    assert first is not None and read_tenant(sessions, tenant.id).admin_password_encrypted == first


@pytest.mark.parametrize("driver", ["simulated", "bench"])
def test_a_create_without_a_credentials_key_fails_its_first_step_saying_what_to_set_and_leaves_the_tenant_as_it_was(
    session, sessions, tenant_factory, runner, driver
):
    """Checked before any driver runs: with the bench driver, before bench is even looked for."""
    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    chosen = SimulatedDriver(0) if driver == "simulated" else BenchDriver(BenchSettings())

    runner(driver=chosen, credentials=SiteCredentials(None)).run(job.id)

    failed = read_job(sessions, job.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error == (
        "step check_preconditions failed: SITE_CREDENTIALS_KEY is not set: make one with `provisioning credentials-key`"
    )
    statuses = [step.status for step in read_steps(sessions, job.id)]
    assert statuses[0] == StepStatus.FAILED and set(statuses[1:]) == {StepStatus.PENDING}
    assert read_tenant(sessions, tenant.id).admin_password_encrypted is None
    assert tenant_status(sessions, tenant.id) == TenantStatus.PENDING


def test_a_worker_without_a_credentials_key_says_so_as_it_starts(isolated):
    worker = WorkerProcess({**isolated.environment, "SITE_CREDENTIALS_KEY": ""}, isolated.dispatcher, concurrency=1)
    try:
        wait_for(lambda: "SITE_CREDENTIALS_KEY is not set" in worker.output(), timeout=30, what="the worker to say so")
        [line] = [line for line in worker.output().splitlines() if "SITE_CREDENTIALS_KEY" in line]
        assert "create_site jobs fail at their first step" in line and "provisioning credentials-key" in line
    finally:
        worker.stop()


def test_a_backup_leaves_an_active_tenant_active_even_when_it_fails(session, sessions, tenant_factory, runner):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = unpublished_job(session, tenant.id, JobType.BACKUP_SITE)
    runner(fail_step="run_backup").run(job.id)
    assert read_job(sessions, job.id).status == JobStatus.FAILED
    assert tenant_status(sessions, tenant.id) == TenantStatus.ACTIVE


def test_a_delete_ends_with_the_tenant_deleted(session, sessions, tenant_factory, runner):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = unpublished_job(session, tenant.id, JobType.DELETE_SITE)
    runner().run(job.id)
    assert read_job(sessions, job.id).status == JobStatus.COMPLETED
    assert tenant_status(sessions, tenant.id) == TenantStatus.DELETED


def test_a_cancel_of_a_running_create_stops_it_inside_its_step_and_puts_the_tenant_back(
    session, sessions, tenant_factory, runner
):
    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    thread = run_in_background(runner(step_seconds=30, heartbeat_seconds=0.2), job.id)
    wait_for(lambda: read_job(sessions, job.id).status == JobStatus.RUNNING, what="the job to start")

    answer = committing(session).cancel_job(tenant.id, job.id)

    assert answer.status == JobStatus.CANCELLING and answer.cancel_requested_at is not None
    cancelled = wait_for(
        lambda: (job_row := read_job(sessions, job.id)).status == JobStatus.CANCELLED and job_row,
        timeout=10,
        what="the job to be cancelled",
    )
    thread.join(timeout=10)
    assert cancelled.completed_at is not None
    steps = read_steps(sessions, job.id)
    assert steps[0].status == StepStatus.CANCELLED
    assert all(step.status == StepStatus.PENDING for step in steps[1:])
    assert tenant_status(sessions, tenant.id) == TenantStatus.PENDING


def test_a_cancelled_delete_puts_the_tenant_back_to_the_state_it_had(session, sessions, tenant_factory, runner):
    tenant = tenant_factory.create(status=TenantStatus.FAILED)
    job = unpublished_job(session, tenant.id, JobType.DELETE_SITE)
    thread = run_in_background(runner(step_seconds=30, heartbeat_seconds=0.2), job.id)
    wait_for(lambda: tenant_status(sessions, tenant.id) == TenantStatus.DELETING, what="the tenant to be deleting")

    committing(session).cancel_job(tenant.id, job.id)

    wait_for(lambda: read_job(sessions, job.id).status == JobStatus.CANCELLED, timeout=10, what="the cancel")
    thread.join(timeout=10)
    assert tenant_status(sessions, tenant.id) == TenantStatus.FAILED


def test_a_cancel_arriving_during_a_quick_step_stops_the_job_before_the_next_one(session, sessions, tenant_factory, runner):
    """The runner checks for a cancel with every step's start it writes, even when the driver never asks."""

    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    cancels = CancelsAt("create_site", lambda: committing(session).cancel_job(tenant.id, job.id))
    runner(driver=cancels, worker="test").run(job.id)

    assert read_job(sessions, job.id).status == JobStatus.CANCELLED
    statuses = {step.name: step.status for step in read_steps(sessions, job.id)}
    assert statuses == create_stopped_at("create_site", StepStatus.COMPLETED)


def test_each_step_is_on_record_as_running_while_it_runs_however_quick_and_the_job_says_what_it_does(
    session, sessions, tenant_factory, runner
):
    """What the API shows of a running job, with the same steps, times and events as ever."""
    seen_during_configure = []

    class Looks(SimulatedDriver):
        def run_step(self, step, context):
            if step == "configure_site":
                seen_during_configure.extend(step.status for step in read_steps(sessions, job.id))
                seen_during_configure.append(read_job(sessions, job.id).message)
            return super().run_step(step, context)

    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    runner(driver=Looks(step_seconds=0)).run(job.id)

    create = workflow_for(JobType.CREATE_SITE)
    configure = create.steps[create.position_of("configure_site")]
    assert seen_during_configure == [
        StepStatus.COMPLETED, StepStatus.SKIPPED, StepStatus.COMPLETED, StepStatus.COMPLETED,  # up to install_apps
        StepStatus.RUNNING, StepStatus.PENDING, configure.message,
    ]  # fmt: skip
    ran = made_without_a_standby_site(read_steps(sessions, job.id))
    assert all(step.status == StepStatus.COMPLETED and step.output for step in ran)
    assert all(step.started_at <= step.finished_at for step in ran)
    assert all(a.finished_at <= b.started_at for a, b in zip(ran, ran[1:]))
    finished = read_job(sessions, job.id)
    assert (finished.status, finished.progress) == (JobStatus.COMPLETED, 100)
    kinds = [event.kind for event in committing(session).list_job_events(tenant.id, job.id)]
    # check_preconditions, claim_standby skipped, then the four steps that make the site.
    made = ["step_started", "step_completed"] * 4
    assert kinds == ["created", "claimed", "step_started", "step_completed", "step_skipped", *made, "completed"]


def test_a_second_delivery_of_a_finished_job_runs_nothing(session, sessions, tenant_factory, runner):
    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    runner().run(job.id)
    before = read_steps(sessions, job.id)

    runner().run(job.id)

    after = read_steps(sessions, job.id)
    assert [(s.id, s.status, s.finished_at) for s in after] == [(s.id, s.status, s.finished_at) for s in before]
    assert read_job(sessions, job.id).status == JobStatus.COMPLETED


def test_a_pending_job_cancelled_before_a_worker_got_it_is_skipped(session, sessions, tenant_factory, runner):
    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    assert committing(session).cancel_job(tenant.id, job.id).status == JobStatus.CANCELLED

    runner().run(job.id)

    assert read_job(sessions, job.id).status == JobStatus.CANCELLED
    assert read_steps(sessions, job.id) == []
    assert tenant_status(sessions, tenant.id) == TenantStatus.PENDING


def test_two_runners_racing_for_one_job_run_its_steps_once(session, sessions, tenant_factory, runner):
    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    runs: list[str] = []

    class CountingDriver(SimulatedDriver):
        def run_step(self, step, context):
            runs.append(step)
            return super().run_step(step, context)

    threads = [run_in_background(runner(driver=CountingDriver(step_seconds=0.05), worker=f"racer-{n}"), job.id) for n in range(4)]
    for thread in threads:
        thread.join(timeout=30)

    assert read_job(sessions, job.id).status == JobStatus.COMPLETED
    # Each step once; claim_standby not at all, skipped with no standby site to claim.
    assert runs == [name for name in workflow_for(JobType.CREATE_SITE).step_names if name != "claim_standby"]


def test_a_job_whose_tenant_changed_before_it_started_fails_without_running_a_step(session, sessions, tenant_factory, runner):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = unpublished_job(session, tenant.id, JobType.BACKUP_SITE)
    tenant_factory.set_status(tenant.tenant, TenantStatus.DELETED)

    runner().run(job.id)

    refused = read_job(sessions, job.id)
    assert refused.status == JobStatus.FAILED
    assert "deleted" in refused.error and "not started" in refused.error
    assert read_steps(sessions, job.id) == []
    assert tenant_status(sessions, tenant.id) == TenantStatus.DELETED


@pytest.mark.parametrize("status", [TenantStatus.PROVISIONING, TenantStatus.DELETING])
def test_no_job_is_accepted_while_the_tenant_is_changing(session, tenant_factory, status):
    from provisioning.errors import Conflict

    tenant = tenant_factory.create(status=status)
    for job_type in JobType:
        with pytest.raises(Conflict, match=status.value):
            committing(session).request_job(tenant.id, job_type)


def test_a_claimed_job_says_what_the_step_it_starts_at_does(session, sessions, tenant_factory, runner):
    """The first step's message, or for a retry that resumes, its resume step's."""
    create = workflow_for(JobType.CREATE_SITE)
    tenant = tenant_factory.create()
    service = committing(session)
    job = unpublished_job(session, tenant.id)
    runner(fail_step="install_apps").run(job.id)
    retry = service.retry_job(tenant.id, job.id)
    assert retry.resume_from == "install_apps"

    service.start_job(retry.id, "test-worker")

    assert read_job(sessions, retry.id).message == create.steps[create.position_of("install_apps")].message
    other = tenant_factory.create()
    fresh = unpublished_job(session, other.id)
    service.start_job(fresh.id, "test-worker")
    assert read_job(sessions, fresh.id).message == create.steps[0].message


def test_a_step_write_after_a_cancel_records_the_steps_done_and_starts_nothing(session, sessions, tenant_factory):
    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    service = committing(session)
    steps = workflow_for(JobType.CREATE_SITE).steps
    service.start_job(job.id, "w@host")
    service.cancel_job(tenant.id, job.id)
    checked = StepRecord(0, steps[0].name, StepStatus.COMPLETED, started_at=utcnow(), finished_at=utcnow(), progress=20)

    assert service.write_steps(job.id, "w@host", [checked], StepRecord.started(1, steps[1])) == JobStatus.CANCELLING
    assert service.write_steps(job.id, "another@host", [], StepRecord.started(2, steps[2])) is None

    cancelling = read_job(sessions, job.id)
    assert (cancelling.progress, cancelling.message) == (20, "Cancel requested; stopping at the next step")
    assert [step.status for step in read_steps(sessions, job.id)][:3] == [
        StepStatus.COMPLETED,
        StepStatus.PENDING,
        StepStatus.PENDING,
    ]


def test_a_create_cancelled_during_its_last_step_removes_the_site_and_says_so(session, sessions, tenant_factory, runner):
    """The completion's compare-and-set finds the job cancelling: the last step's end is written
    all the same, and the cancel is settled: the site made is removed, the tenant is as before."""

    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    driver = CancelsAt("verify_site", lambda: committing(session).cancel_job(tenant.id, job.id))
    undoing = Undoes()
    driver.undo = undoing.undo
    runner(driver=driver).run(job.id)

    cancelled = read_job(sessions, job.id)
    assert (cancelled.status, cancelled.message) == (JobStatus.CANCELLED, "Cancelled; its partial work was undone")
    assert undoing.undone == 1
    assert {step.status for step in made_without_a_standby_site(read_steps(sessions, job.id))} == {StepStatus.COMPLETED}
    assert tenant_status(sessions, tenant.id) == TenantStatus.PENDING
    kinds = [event.kind for event in committing(session).list_job_events(tenant.id, job.id)]
    # Listed in the order things happened, although the last step's events were written after the cancel's.
    assert kinds[-4:] == ["step_started", "cancel_requested", "step_completed", "cancelled"]


def created_site(session, sessions, tenant_factory, runner):
    """A tenant whose site a create job made (active, with its admin password stored)."""
    tenant = tenant_factory.create()
    runner().run(unpublished_job(session, tenant.id).id)
    assert read_tenant(sessions, tenant.id).admin_password_encrypted is not None
    return tenant


def job_backups(sessions, job_id) -> list[SiteBackup]:
    with sessions() as session:
        return list(session.scalars(select(SiteBackup).where(SiteBackup.job_id == job_id)))


def backup_cancelled_at(step: str, settings, session, sessions, tenant_factory, runner):
    """An active tenant's backup job, run through, whose cancel arrives as its platform step
    ``step`` starts; returns the tenant and the job."""
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = unpublished_job(session, tenant.id, JobType.BACKUP_SITE)
    cancel = lambda: committing(session).cancel_job(tenant.id, job.id)  # noqa: E731
    runner(backup_steps=CancelsAtPlatformStep(sessions, settings, step, cancel)).run(job.id)
    return tenant, job


def test_a_backup_cancelled_while_it_is_verified_starts_no_further_step_and_discards_the_backup(
    settings, session, sessions, tenant_factory, runner
):
    tenant, job = backup_cancelled_at("verify_backup", settings, session, sessions, tenant_factory, runner)

    cancelled = read_job(sessions, job.id)
    assert (cancelled.status, cancelled.message) == (JobStatus.CANCELLED, "Cancelled; its partial work was undone")
    statuses = {step.name: step.status for step in read_steps(sessions, job.id)}
    assert statuses == {
        "run_backup": StepStatus.COMPLETED,
        "verify_backup": StepStatus.COMPLETED,
        "copy_offsite": StepStatus.PENDING,
        "record_backup": StepStatus.PENDING,
    }
    [backup] = job_backups(sessions, job.id)
    assert backup.status == BackupStatus.FAILED and "cancelled" in backup.error
    assert not any(Path(file["path"]).exists() for file in backup.files)
    assert tenant_status(sessions, tenant.id) == TenantStatus.ACTIVE


def test_a_backup_cancelled_during_its_last_step_keeps_the_backup_and_says_so(
    settings, session, sessions, tenant_factory, runner
):
    """record_backup prunes older backups on the strength of the new one: past it, the backup stays."""
    tenant, job = backup_cancelled_at("record_backup", settings, session, sessions, tenant_factory, runner)

    cancelled = read_job(sessions, job.id)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.message == (
        "Cancelled after record_backup had completed; that cannot be undone: the backup it took is kept"
    )
    [backup] = job_backups(sessions, job.id)
    assert backup.status == BackupStatus.COMPLETED
    assert all(Path(file["path"]).is_file() for file in backup.files)
    assert tenant_status(sessions, tenant.id) == TenantStatus.ACTIVE


def test_a_delete_cancelled_during_its_last_step_says_the_site_is_gone_and_forgets_its_password(
    session, sessions, tenant_factory, runner
):
    tenant = created_site(session, sessions, tenant_factory, runner)
    job = unpublished_job(session, tenant.id, JobType.DELETE_SITE)
    runner(driver=CancelsAt("archive_site", lambda: committing(session).cancel_job(tenant.id, job.id))).run(job.id)

    cancelled = read_job(sessions, job.id)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.message == (
        "Cancelled after drop_site had completed; that cannot be undone: the site is dropped; the backup it took is kept"
    )
    after = read_tenant(sessions, tenant.id)
    assert (after.status, after.admin_password_encrypted) == (TenantStatus.DELETED, None)
    [final_backup] = job_backups(sessions, job.id)
    assert final_backup.status == BackupStatus.COMPLETED


def test_a_delete_that_took_no_final_backup_cancelled_during_its_last_step_claims_no_backup(
    session, sessions, tenant_factory, runner
):
    tenant = created_site(session, sessions, tenant_factory, runner)
    job = committing(session).request_job(tenant.id, JobType.DELETE_SITE, options={SKIP_FINAL_BACKUP: True})
    runner(driver=CancelsAt("archive_site", lambda: committing(session).cancel_job(tenant.id, job.id))).run(job.id)

    cancelled = read_job(sessions, job.id)
    assert (cancelled.status, cancelled.message) == (
        JobStatus.CANCELLED,
        "Cancelled after drop_site had completed; that cannot be undone: the site is dropped",
    )
    assert job_backups(sessions, job.id) == []


def test_a_backup_cancelled_in_its_driver_step_leaves_none_of_the_files_it_wrote(
    settings, session, sessions, tenant_factory, runner
):
    """What bench wrote before the backup was recorded is no record's: the cancel removes it at once."""

    class WritesHalfABackupThenIsCancelled(SimulatedDriver):
        def run_step(self, step, context):
            (context.backup_directory() / "half.sql.gz").write_bytes(b"\x1f\x8b")
            committing(session).cancel_job(tenant.id, job.id)
            raise StepStopped(step)

    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = unpublished_job(session, tenant.id, JobType.BACKUP_SITE)
    runner(driver=WritesHalfABackupThenIsCancelled(0)).run(job.id)

    cancelled = read_job(sessions, job.id)
    assert (cancelled.status, cancelled.message) == (JobStatus.CANCELLED, "Cancelled; its partial work was undone")
    assert not (settings.backup_path / tenant.tenant.slug / str(job.id)).exists()


def test_a_delete_cancelled_while_it_drops_the_site_lets_the_drop_finish_and_says_so(
    session, sessions, tenant_factory, runner
):
    """A half-dropped site could be neither kept nor given back: once drop_site starts, it runs to its end."""

    class CancelsWhileDropping(SimulatedDriver):
        def run_step(self, step, context):
            # drop_site takes a while and asks whether to stop all along, as bench's drop-site does.
            self.step_seconds = 1.5 if step == "drop_site" else 0
            if step == "drop_site":
                committing(session).cancel_job(tenant.id, job.id)
            return super().run_step(step, context)

    tenant = created_site(session, sessions, tenant_factory, runner)
    job = unpublished_job(session, tenant.id, JobType.DELETE_SITE)
    # The heartbeat learns of the cancel, and of its grace period's end, while drop_site runs.
    runner(driver=CancelsWhileDropping(0), heartbeat_seconds=0.05, cancel_grace=0.2).run(job.id)

    cancelled = read_job(sessions, job.id)
    assert (cancelled.status, cancelled.message) == (
        JobStatus.CANCELLED,
        "Cancelled after drop_site had completed; that cannot be undone: the site is dropped; the backup it took is kept",
    )
    statuses = [step.status for step in read_steps(sessions, job.id)]
    assert statuses == [StepStatus.COMPLETED] * 5 + [StepStatus.PENDING]
    assert tenant_status(sessions, tenant.id) == TenantStatus.DELETED


def test_a_skipped_step_is_on_record_as_skipped_by_the_time_the_next_step_runs(session, sessions, tenant_factory, runner):
    seen_during_drop = {}

    class Looks(SimulatedDriver):
        def run_step(self, step, context):
            if step == "drop_site":
                seen_during_drop.update({row.name: row.status for row in read_steps(sessions, job.id)})
            return super().run_step(step, context)

    tenant = created_site(session, sessions, tenant_factory, runner)
    job = committing(session).request_job(tenant.id, JobType.DELETE_SITE, options={SKIP_FINAL_BACKUP: True})
    runner(driver=Looks(0)).run(job.id)

    assert seen_during_drop == {
        "check_site": StepStatus.COMPLETED,
        "final_backup": StepStatus.SKIPPED,
        "verify_backup": StepStatus.SKIPPED,
        "copy_offsite": StepStatus.SKIPPED,
        "drop_site": StepStatus.RUNNING,
        "archive_site": StepStatus.PENDING,
    }
    assert read_job(sessions, job.id).status == JobStatus.COMPLETED


def test_a_step_boundary_whose_write_fails_fails_the_job_at_the_next_step_with_the_one_before_completed(
    session, sessions, tenant_factory, runner, monkeypatch
):
    """The end of a step waits for the next write; when that write fails, the failure that follows
    records it, so the retry resumes at the step that never started, not at the one that was done."""
    writes = []
    write_steps = JobExecution.write_steps

    def second_boundary_fails(service, job_id, worker, done, starting=None):
        writes.append(starting.name if starting else None)
        if len(writes) == 2:
            raise RuntimeError("the write of a step boundary failed")
        return write_steps(service, job_id, worker, done, starting)

    tenant = tenant_factory.create()
    job = unpublished_job(session, tenant.id)
    monkeypatch.setattr(JobExecution, "write_steps", second_boundary_fails)
    with pytest.raises(RuntimeError):
        runner().run(job.id)

    assert writes == ["create_site", "install_apps"]
    failed = read_job(sessions, job.id)
    assert failed.error == "stopped outside a step: RuntimeError: the write of a step boundary failed"
    statuses = {step.name: step.status for step in read_steps(sessions, job.id)}
    assert statuses == create_stopped_at("install_apps", StepStatus.FAILED)
    assert committing(session).retry_job(tenant.id, job.id).resume_from == "install_apps"
