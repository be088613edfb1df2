"""Restores and restore drills on real PostgreSQL, through the worker's runner on the simulated
driver: a backup counts once it has been restored, and a restore that fails leaves the site as it was."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from provisioning.backups.book import BackupBook, Retention
from provisioning.enums import BackupStatus, JobStatus, JobType, StepStatus, TenantStatus
from provisioning.errors import Conflict, NotFound
from provisioning.jobs.workflows import workflow_for
from provisioning.models import JobEvent, SiteBackup
from provisioning.operations.health import check_restore_proofs
from provisioning.operations.schedules import DRILL_SCHEDULER, schedule_drills
from provisioning.sites.drivers.simulated import SimulatedDriver
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


def restore(session, tenant, backup, **options):
    return committing(session).request_job(tenant.id, JobType.RESTORE_SITE, options={"backup_id": str(backup.id), **options})


def read_backup(sessions, backup_id) -> SiteBackup:
    with sessions() as session:
        return session.get(SiteBackup, backup_id)


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


def test_a_restore_failing_after_it_changed_the_site_puts_it_back_and_its_retry_restores_again(
    session, sessions, runner, active
):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)

    runner(fail_step="migrate_site").run(job.id)

    failed = read_job(sessions, job.id)
    assert failed.status == JobStatus.FAILED
    assert "migrate_site failed" in failed.error and "the site was put back as it was before the job" in failed.error
    assert "put back from its safety backup" in read_steps(sessions, job.id)[4].output
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE  # served as it was, and open to a retry

    retry = committing(session).retry_job(active.id, job.id)
    assert retry.resume_from == "restore_site"  # the put-back undid the restore: it is done again
    runner().run(retry.id)
    assert read_job(sessions, retry.id).status == JobStatus.COMPLETED
    assert read_backup(sessions, backup.id).restore_proven_at is not None


def test_a_failed_restore_without_a_safety_backup_says_the_site_could_not_be_put_back(session, sessions, runner, active):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup, skip_safety_backup=True)

    runner(fail_step="restore_site").run(job.id)

    error = read_job(sessions, job.id).error
    assert "putting the site back failed too" in error and "skip_safety_backup" in error
    assert tenant_status(sessions, active.id) == TenantStatus.FAILED


def test_a_restore_failing_before_it_changed_the_site_leaves_the_tenant_as_it_was(session, sessions, runner, active):
    backup = backup_of(session, sessions, runner, active)
    job = restore(session, active, backup)

    runner(fail_step="safety_backup").run(job.id)

    assert "put back" not in read_job(sessions, job.id).error
    assert tenant_status(sessions, active.id) == TenantStatus.ACTIVE


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
    assert marked.drill_failed_at is not None and "changed since it was written" in marked.drill_error
    doctor = check_restore_proofs(settings)
    assert not doctor.ok and str(backup.id) in doctor.detail

    dump.write_bytes(intact)  # put back, say, from the operator's own copy
    drill = committing(session).request_job(active.id, JobType.RESTORE_DRILL)
    runner().run(drill.id)

    assert read_job(sessions, drill.id).status == JobStatus.COMPLETED
    assert str(backup.id) not in check_restore_proofs(settings).detail


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
    assert read_backup(sessions, backup.id).drill_failed_at is None


def test_drills_are_scheduled_once_per_interval_for_tenants_with_a_backup(session, sessions, runner, tenant_factory):
    with_backup = tenant_factory.create(status=TenantStatus.ACTIVE)
    backup_of(session, sessions, runner, with_backup)
    without = tenant_factory.create(status=TenantStatus.ACTIVE)
    service = committing(session)

    first = schedule_drills(service, DAILY)
    again = schedule_drills(service, DAILY)

    drills = [read_job(sessions, job_id) for job_id in first]
    assert [drill.tenant_id for drill in drills if drill.tenant_id in (with_backup.id, without.id)] == [with_backup.id]
    assert all(drill.job_type == JobType.RESTORE_DRILL for drill in drills)
    assert with_backup.id not in [read_job(sessions, job_id).tenant_id for job_id in again]
    with sessions() as reading:
        actors = reading.scalars(select(JobEvent.actor).where(JobEvent.job_id.in_(first), JobEvent.kind == "created")).all()
    assert set(actors) == {DRILL_SCHEDULER}
