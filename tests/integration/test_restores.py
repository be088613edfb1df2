"""Restores and restore drills on real PostgreSQL, through the worker's runner on the simulated
driver: a backup counts once it has been restored, and a restore that fails leaves the site as it was."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

from provisioning.backups.book import BackupBook, Retention, retention_of
from provisioning.backups.proofs import RestoreProofs
from provisioning.backups.steps import BackupSteps
from provisioning.enums import BackupStatus, JobStatus, JobType, StepStatus, TenantStatus
from provisioning.errors import Conflict, NotFound, SiteUnchanged
from provisioning.jobs.records import StepRecord
from provisioning.jobs.requests import JobRequests
from provisioning.jobs.workflows import workflow_for
from provisioning.models import JobEvent, ProvisioningJob, SiteBackup
from provisioning.operations.health import check_restore_proofs
from provisioning.operations.schedules import DRILL_SCHEDULER, schedule_drills
from provisioning.platform.db import utcnow
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.factories import TenantFactory, make_backup
from tests.helpers import committing, wait_for
from tests.records import read_job, read_steps, tenant_status

DAILY = timedelta(hours=24)


def backup_of(session, sessions, runner, tenant) -> SiteBackup:
    """A completed backup of the tenant's (simulated) site, taken by a backup_site job."""
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    runner().run(job.id)
    assert read_job(sessions, job.id).status == JobStatus.COMPLETED
    with sessions() as reading:
        return BackupBook(reading).of_job(job.id)


class RaisesAt(SimulatedDriver):
    """Quick steps; the one named ``step`` raises ``error``; counts the undos asked of it."""

    def __init__(self, step: str, error: BaseException):
        super().__init__(step_seconds=0)
        self.step, self.error, self.undone = step, error, 0

    def run_step(self, step, context):
        if step == self.step:
            raise self.error
        return super().run_step(step, context)

    def undo(self, context):
        self.undone += 1
        return super().undo(context)


def restore(session, tenant, backup, **options):
    return committing(session).request_job(tenant.id, JobType.RESTORE_SITE, options={"backup_id": str(backup.id), **options})


def failing_backups(sessions) -> list:
    with sessions() as session:
        return [backup.id for backup in RestoreProofs(session).disproven()]


def read_backup(sessions, backup_id) -> SiteBackup:
    with sessions() as session:
        return session.get(SiteBackup, backup_id)


def step_output(sessions, job_id, name: str) -> str:
    return next(step.output for step in read_steps(sessions, job_id) if step.name == name)


def steps_by_name(sessions, job_id) -> dict[str, StepStatus]:
    return {step.name: step.status for step in read_steps(sessions, job_id)}


@pytest.fixture
def active(tenant_factory):
    return tenant_factory.create(status=TenantStatus.ACTIVE)


def test_a_restore_checks_the_backup_takes_a_safety_backup_restores_and_proves_the_backup(session, sessions, runner, active):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)

    runner().run(job.id)

    finished = read_job(sessions, job.id)
    assert (finished.status, finished.progress, finished.error) == (JobStatus.COMPLETED, 100, None)
    assert steps_by_name(sessions, job.id) == dict.fromkeys(workflow_for(JobType.RESTORE_SITE).step_names, StepStatus.COMPLETED)
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE
    assert read_backup(sessions, backup.id).restore_proven_at is not None
    with sessions() as reading:
        safety = BackupBook(reading).of_job(job.id)
    assert safety is not None and safety.status == BackupStatus.COMPLETED and safety.id != backup.id


def test_a_restore_that_skips_its_safety_backup_takes_none(session, sessions, runner, active):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup, skip_safety_backup=True)

    runner().run(job.id)

    steps = steps_by_name(sessions, job.id)
    assert read_job(sessions, job.id).status == JobStatus.COMPLETED
    assert steps["safety_backup"] == steps["verify_backup"] == StepStatus.SKIPPED
    with sessions() as reading:
        assert BackupBook(reading).of_job(job.id) is None


def test_a_restore_failing_after_it_changed_the_site_puts_it_back_and_its_retry_starts_over(
    session, sessions, runner, active
):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)

    runner(fail_step="migrate_site").run(job.id)

    failed = read_job(sessions, job.id)
    assert failed.status == JobStatus.FAILED
    assert "migrate_site failed" in failed.error and "the site was put back as it was before the job" in failed.error
    assert "put back from its safety backup" in step_output(sessions, job.id, "migrate_site")
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE  # served as it was, and open to a retry

    # The site was in use since it was put back: the first safety backup is out of date.
    retry = committing(session).retry_job(active.id, job.id)
    assert retry.resume_from is None
    runner().run(retry.id)
    assert read_job(sessions, retry.id).status == JobStatus.COMPLETED
    assert read_backup(sessions, backup.id).restore_proven_at is not None


def test_a_failed_restore_without_a_safety_backup_says_the_site_could_not_be_put_back_and_its_retry_resumes(
    session, sessions, runner, active
):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup, skip_safety_backup=True)

    runner(fail_step="restore_site").run(job.id)

    error = read_job(sessions, job.id).error
    assert "undoing it failed too" in error and "skip_safety_backup" in error
    assert tenant_status(sessions, active.id) == TenantStatus.FAILED
    retry = committing(session).retry_job(active.id, job.id)  # a failed tenant's restore is what brings it back
    assert retry.resume_from == "restore_site"
    runner().run(retry.id)
    assert read_job(sessions, retry.id).status == JobStatus.COMPLETED
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE


def test_a_restore_cut_short_by_the_task_s_time_limit_is_not_undone_and_its_retry_restores_again(
    session, sessions, runner, active
):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)

    runner(driver=RaisesAt("migrate_site", SoftTimeLimitExceeded())).run(job.id)

    assert "soft time limit" in read_job(sessions, job.id).error
    assert tenant_status(sessions, active.id) == TenantStatus.FAILED  # half restored: no time was left to undo
    retry = committing(session).retry_job(active.id, job.id)
    assert retry.resume_from == "restore_site"  # restored again, with the safety backup it kept
    runner().run(retry.id)
    assert read_job(sessions, retry.id).status == JobStatus.COMPLETED
    with sessions() as reading:
        assert BackupBook(reading).kept_of_job(retry.id) == 1


def test_a_restore_refused_before_it_changed_anything_is_not_undone_and_the_tenant_stays_active(
    session, sessions, runner, active
):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)

    refused = RaisesAt("restore_site", SiteUnchanged("the database refused the root login of `bench restore`"))

    runner(driver=refused).run(job.id)

    assert read_job(sessions, job.id).error == "step restore_site failed: the database refused the root login of `bench restore`"
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE and refused.undone == 0


def test_a_restore_whose_proof_cannot_be_recorded_keeps_the_restored_site_and_its_retry_records_it(
    session, sessions, runner, active, settings
):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)
    undone = []

    class Records(SimulatedDriver):
        def undo(self, context):
            undone.append(context.job_id)
            return super().undo(context)

    class DatabaseBlip(BackupSteps):
        def prove_backup(self, session, tenant_id, backup_id):
            raise OperationalError("UPDATE site_backups", {}, Exception("server closed the connection"))

    runner(driver=Records(0), backup_steps=DatabaseBlip(sessions, retention_of(settings))).run(job.id)

    assert read_job(sessions, job.id).status == JobStatus.FAILED and undone == []
    retry = committing(session).retry_job(active.id, job.id)
    assert retry.resume_from == "prove_backup"
    runner().run(retry.id)
    assert read_job(sessions, retry.id).status == JobStatus.COMPLETED
    assert read_backup(sessions, backup.id).restore_proven_at is not None


def test_a_restore_failing_before_it_restored_only_opens_the_site_again(session, sessions, runner, active):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)

    runner(fail_step="safety_backup").run(job.id)

    assert read_job(sessions, job.id).error.endswith("; the site was put back as it was before the job")
    assert "opened again, unchanged" in step_output(sessions, job.id, "safety_backup")
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE


def test_a_restore_closes_the_site_before_its_safety_backup_and_opens_it_after_it_answers(session, sessions, runner, active):
    """What users write after the safety backup would be lost if the site were put back from it."""
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)

    runner().run(job.id)

    names = [step.name for step in read_steps(sessions, job.id)]
    assert names.index("close_site") < names.index("safety_backup") < names.index("restore_site")
    assert names.index("verify_site") < names.index("reopen_site")


def test_a_backup_whose_files_changed_is_not_restored_and_counts_as_failing_until_a_drill_proves_it(
    session, sessions, runner, active, settings
):
    backup = backup_of(session, sessions, runner, active)
    dump = Path(next(file["path"] for file in backup.files if file["kind"] == "database"))
    intact = dump.read_bytes()
    dump.write_bytes(intact[:-8])  # a disk error, or someone's edit
    job = restore(session, active, backup)

    runner().run(job.id)

    failed = read_job(sessions, job.id)
    assert failed.status == JobStatus.FAILED and "check_backup failed" in failed.error and "changed since" in failed.error
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE
    marked = read_backup(sessions, backup.id)
    assert marked.restore_failed_at is not None and "changed since it was written" in marked.restore_error
    assert backup.id in failing_backups(sessions)

    dump.write_bytes(intact)  # put back, say, from the operator's own copy
    drill = committing(session).request_job(active.id, JobType.RESTORE_DRILL, options={"backup_id": str(backup.id)})
    runner().run(drill.id)

    assert read_job(sessions, drill.id).status == JobStatus.COMPLETED
    assert backup.id not in failing_backups(sessions)


def test_doctor_and_the_metrics_name_a_backup_that_failed_its_last_restore(isolated, tmp_path):
    with isolated.session() as session:
        tenant = TenantFactory(session).create(status=TenantStatus.ACTIVE)
        backup = make_backup(session, tenant, tmp_path, timedelta(hours=1))
        assert check_restore_proofs(isolated.settings).ok

        RestoreProofs(session).disprove(tenant.id, backup.id, "bench could not restore the backup: ERROR 1064")
        doctor = check_restore_proofs(isolated.settings)
        assert not doctor.ok and str(backup.id) in doctor.detail and "ERROR 1064" in doctor.detail
        assert RestoreProofs(session).counts() == (0, 1)

        RestoreProofs(session).prove(tenant.id, backup.id)
        assert check_restore_proofs(isolated.settings).ok and RestoreProofs(session).counts() == (1, 0)


def test_a_restore_names_a_completed_backup_of_the_tenant_or_is_refused(session, sessions, runner, active, tenant_factory):
    backup = backup_of(session, sessions, runner, active)
    other = tenant_factory.create(status=TenantStatus.ACTIVE)

    with pytest.raises(NotFound, match="not found"):
        restore(session, other, backup)  # another tenant's backup looks like a missing one
    session.rollback()
    BackupBook(session).prune(Retention(keep_last=0, max_age=timedelta(days=1)), active.id)
    with pytest.raises(Conflict, match="is pruned: only a completed backup can be restored"):
        restore(session, active, backup)
    session.rollback()
    with pytest.raises(Conflict, match="no completed backup"):
        committing(session).request_job(other.id, JobType.RESTORE_DRILL)


def test_retention_keeps_the_backup_an_active_restore_uses(session, sessions, runner, active):
    backup = backup_of(session, sessions, runner, active)
    restore(session, active, backup)

    assert BackupBook(session).prune(Retention(keep_last=0, max_age=timedelta(days=1)), active.id) == []
    assert read_backup(sessions, backup.id).status == BackupStatus.COMPLETED


def test_a_cancel_during_the_restore_puts_the_site_back_then_discards_the_safety_backup(session, sessions, runner, active):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)
    undone = []

    class Records(SimulatedDriver):
        def undo(self, context):
            undone.append(context.safety_backup())  # still there while it is put back
            return super().undo(context)

    worker = threading.Thread(target=runner(driver=Records(step_seconds=0.5)).run, args=(job.id,))
    worker.start()
    wait_for(lambda: read_job(sessions, job.id).message == "Restoring the database and files", what="the restore step")
    committing(session).cancel_job(active.id, job.id)
    worker.join(timeout=30)

    finished = read_job(sessions, job.id)
    assert (finished.status, finished.message) == (JobStatus.CANCELLED, "Cancelled; its partial work was undone")
    assert len(undone) == 1 and undone[0]  # the safety backup's files
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE
    with sessions() as reading:
        assert BackupBook(reading).kept_of_job(job.id) == 0


def test_a_drill_proves_the_newest_backup_without_touching_the_tenant(session, sessions, runner, active):
    backup_of(session, sessions, runner, active)
    newest = backup_of(session, sessions, runner, active)
    job = committing(session).request_job(active.id, JobType.RESTORE_DRILL)
    assert job.options == {"backup_id": str(newest.id)}

    runner().run(job.id)

    assert read_job(sessions, job.id).status == JobStatus.COMPLETED
    assert steps_by_name(sessions, job.id) == dict.fromkeys(workflow_for(JobType.RESTORE_DRILL).step_names, StepStatus.COMPLETED)
    assert read_backup(sessions, newest.id).restore_proven_at is not None
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE


def test_a_drill_failing_for_the_driver_s_own_reasons_does_not_count_against_the_backup(session, sessions, runner, active):
    backup = backup_of(session, sessions, runner, active)
    failing = committing(session).request_job(active.id, JobType.RESTORE_DRILL)

    runner(fail_step="restore_scratch").run(failing.id)

    assert read_job(sessions, failing.id).status == JobStatus.FAILED
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE  # the tenant's own site was never touched
    assert read_backup(sessions, backup.id).restore_failed_at is None


def test_drills_are_scheduled_once_per_interval_for_tenants_with_a_backup(isolated, tmp_path):
    with isolated.session() as session:
        factory = TenantFactory(session)
        with_backup = factory.create(status=TenantStatus.ACTIVE)
        factory.create(status=TenantStatus.ACTIVE)  # without a backup: nothing to drill
        backup = make_backup(session, with_backup, tmp_path, timedelta(hours=1))
        service = committing(session)

        first = schedule_drills(service, DAILY)
        again = schedule_drills(service, DAILY)

        [drill] = [read_job(isolated.sessions, job_id) for job_id in first]
        assert (drill.tenant_id, drill.job_type) == (with_backup.id, JobType.RESTORE_DRILL)
        assert drill.options == {"backup_id": str(backup.id)}
        assert again == []
        actor = session.scalar(select(JobEvent.actor).where(JobEvent.job_id == drill.id, JobEvent.kind == "created"))
        assert actor == DRILL_SCHEDULER


def waiting_on_a_lock(sessions) -> int:
    """How many of the database's connections wait on a lock now (a transaction of its own: the
    statistics views keep what they first showed for the rest of a transaction)."""
    with sessions() as watching:
        return watching.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
        )


def test_retention_waits_for_a_restore_being_asked_for_and_then_keeps_its_backup(sessions, active, tmp_path):
    """The request locks the backup until it commits; a prune meanwhile waits, then sees the restore."""
    with sessions() as setup:
        backup = make_backup(setup, active, tmp_path, timedelta(days=90))
    pruned = []

    def prune() -> None:
        with sessions() as pruning:
            pruned.extend(BackupBook(pruning).prune(Retention(keep_last=0, max_age=timedelta(days=30)), active.id))

    with sessions() as asking:
        JobRequests(asking).request_job(active.id, JobType.RESTORE_SITE, options={"backup_id": str(backup.id)})
        pruner = threading.Thread(target=prune)
        pruner.start()
        wait_for(lambda: waiting_on_a_lock(sessions) >= 1, what="the prune to wait for the restore's request")
        asking.commit()
    pruner.join(timeout=30)

    assert pruned == [] and read_backup(sessions, backup.id).status == BackupStatus.COMPLETED


def test_a_restore_whose_worker_was_lost_mid_restore_leaves_the_tenant_failed_and_its_retry_restores_again(
    session, sessions, runner, active
):
    """Nothing undoes what a dead worker left: the site may be half restored, and the retry is what brings it back."""
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)
    service = committing(session)
    service.start_job(job.id, "worker@crashed-host")
    workflow = workflow_for(JobType.RESTORE_SITE)
    for position in range(1, workflow.position_of("restore_site") + 1):  # each step done, up to restore_site begun
        done = StepRecord(position - 1, workflow.steps[position - 1].name, StepStatus.COMPLETED, finished_at=utcnow())
        service.write_steps(job.id, "worker@crashed-host", [done], StepRecord.started(position, workflow.steps[position]))
    with sessions() as aging:
        silent_since = utcnow() - timedelta(minutes=5)
        aging.execute(update(ProvisioningJob).where(ProvisioningJob.id == job.id).values(heartbeat_at=silent_since))
        aging.commit()

    assert job.id in service.reap_lost_jobs(timedelta(seconds=60))

    assert "worker@crashed-host" in read_job(sessions, job.id).error
    assert tenant_status(sessions, active.id) == TenantStatus.FAILED
    retry = service.retry_job(active.id, job.id)
    assert retry.resume_from == "restore_site"
    runner().run(retry.id)
    assert read_job(sessions, retry.id).status == JobStatus.COMPLETED
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE
