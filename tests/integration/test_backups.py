"""Backups kept by policy: the schedule that asks for them (through a real sweeper) and retention."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from provisioning.backups.book import BackupBook, Retention
from provisioning.enums import BackupStatus, JobStatus, JobType, StepStatus, TenantStatus
from provisioning.jobs.runner import JobRunner
from provisioning.models import JobEvent, ProvisioningJob, SiteBackup, Tenant
from provisioning.operations.schedules import SCHEDULER, schedule_backups
from provisioning.sites.drivers import make_driver
from provisioning.sites.drivers.base import BackupFile
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.factories import GOOD_DUMP, TenantFactory, make_backup
from tests.helpers import committing, not_private, recording, wait_for
from tests.records import read_job, read_steps
from tests.stack import SweeperProcess

DAILY = timedelta(hours=24)


def backup_jobs(sessions, tenant_id) -> list[ProvisioningJob]:
    with sessions() as session:
        return list(
            session.scalars(
                select(ProvisioningJob).where(
                    ProvisioningJob.tenant_id == tenant_id, ProvisioningJob.job_type == JobType.BACKUP_SITE
                )
            )
        )


def test_each_active_tenant_due_gets_one_backup_and_asking_again_adds_none(isolated):
    sent = []
    with isolated.session() as session:
        factory = TenantFactory(session)
        due = [factory.create(status=TenantStatus.ACTIVE) for _ in range(2)]
        pending = factory.create()
        backed_up = factory.create(status=TenantStatus.ACTIVE)
        committing(session).request_job(backed_up.id, JobType.BACKUP_SITE)
        just_created = factory.create()
        create = committing(session).request_job(just_created.id, JobType.CREATE_SITE)
        JobRunner.for_settings(isolated.settings, isolated.sessions, SimulatedDriver(step_seconds=0), "w@test").run(create.id)
        assert session.get(Tenant, just_created.id, populate_existing=True).status == TenantStatus.ACTIVE
        service = committing(session, dispatch=recording(sent))

        first = schedule_backups(service, DAILY)
        again = schedule_backups(service, DAILY)  # a second sweeper, or one restarted

        assert sorted(map(str, first)) == sorted(map(str, sent)) and again == []
        tenants = (*due, pending, backed_up, just_created)
        assert [len(backup_jobs(isolated.sessions, tenant.id)) for tenant in tenants] == [1, 1, 0, 1, 0]
        actors = session.scalars(select(JobEvent.actor).where(JobEvent.job_id.in_(first), JobEvent.kind == "created")).all()
        assert actors == [SCHEDULER, SCHEDULER]


def test_a_busy_tenant_is_skipped_and_logged_then_backed_up_once_it_is_free(isolated, caplog):
    caplog.set_level(logging.INFO, logger="provisioning.operations.schedules")
    with isolated.session() as session:
        tenant = TenantFactory(session).create(status=TenantStatus.ACTIVE)
        service = committing(session)
        delete = service.request_job(tenant.id, JobType.DELETE_SITE)

        assert schedule_backups(service, DAILY) == []
        assert f"scheduled backup_site of {tenant.tenant.slug} skipped for now" in caplog.text
        assert "already has an active job" in caplog.text

        service.cancel_job(tenant.id, delete.id)
        assert len(schedule_backups(service, DAILY)) == 1


def test_a_restarted_sweeper_does_not_back_a_tenant_up_twice(isolated, tmp_path):
    environment = {**isolated.environment, "SWEEP_INTERVAL_SECONDS": "0.5", "BACKUP_INTERVAL_HOURS": "24"}
    with isolated.session() as session:
        factory = TenantFactory(session)
        first = factory.create(status=TenantStatus.ACTIVE)
        sweeper = SweeperProcess(environment, tmp_path)
        try:
            wait_for(lambda: backup_jobs(isolated.sessions, first.id), timeout=30, what="the first scheduled backup")
        finally:
            sweeper.stop()

        # The second tenant's backup shows that the restarted sweeper swept; the first was not due again.
        second = factory.create(status=TenantStatus.ACTIVE)
        sweeper = SweeperProcess(environment, tmp_path)
        try:
            wait_for(lambda: backup_jobs(isolated.sessions, second.id), timeout=30, what="the restarted sweeper's sweep")
        finally:
            log = sweeper.stop()
        assert len(backup_jobs(isolated.sessions, first.id)) == 1, log


def test_retention_keeps_the_newest_and_prunes_the_rest_with_their_files(session, tenant_factory, tmp_path):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    ages = [timedelta(hours=hours) for hours in (1, 2, 3, 4)]
    backups = [make_backup(session, tenant, tmp_path / str(n), age) for n, age in enumerate(ages)]
    too_old = make_backup(session, tenant, tmp_path / "old", timedelta(days=40))

    pruned = BackupBook(session).prune(Retention(keep_last=3, max_age=timedelta(days=30)), tenant.id)

    assert sorted(pruned) == sorted([backups[3].id, too_old.id])
    for backup in [*backups, too_old]:
        session.refresh(backup)
    assert [backup.status for backup in backups] == [BackupStatus.COMPLETED] * 3 + [BackupStatus.PRUNED]
    assert too_old.status == BackupStatus.PRUNED and too_old.pruned_at is not None
    assert not (tmp_path / "3").exists() and not (tmp_path / "old").exists()
    assert all((tmp_path / str(n) / "database.sql.gz").exists() for n in range(3))


def test_retention_never_touches_a_backup_that_a_running_job_uses(session, tenant_factory, tmp_path):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    in_use = make_backup(session, tenant, tmp_path / "in-use", timedelta(days=60), job_id=job.id)

    assert BackupBook(session).prune(Retention(keep_last=1, max_age=timedelta(days=1)), tenant.id) == []
    assert (tmp_path / "in-use" / "database.sql.gz").exists()

    committing(session).cancel_job(tenant.id, job.id)
    assert BackupBook(session).prune(Retention(keep_last=1, max_age=timedelta(days=1)), tenant.id) == [in_use.id]


def test_a_completed_backup_job_prunes_beyond_the_newest_kept(settings, sessions, session, tenant_factory, tmp_path):
    """record_backup applies the policy as soon as a new backup is in, not only at the next sweep."""
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    worker_settings = settings.model_copy(update={"backup_path": tmp_path, "backup_keep_last": 2})
    for _ in range(3):
        job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
        JobRunner.for_settings(worker_settings, sessions, SimulatedDriver(step_seconds=0), "w@test").run(job.id)
        assert session.get(ProvisioningJob, job.id, populate_existing=True).status == JobStatus.COMPLETED

    statuses = session.scalars(
        select(SiteBackup.status).where(SiteBackup.tenant_id == tenant.id).order_by(SiteBackup.created_at)
    ).all()
    assert statuses == [BackupStatus.PRUNED, BackupStatus.COMPLETED, BackupStatus.COMPLETED]


def test_an_unverified_backup_of_a_job_that_ended_is_discarded_with_its_files(session, tenant_factory, tmp_path):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    dump = tmp_path / "database.sql.gz"
    dump.write_bytes(GOOD_DUMP)
    backup = BackupBook(session).start(tenant.id, job.id, "site.test", [BackupFile("database", dump)])
    retention = Retention(keep_last=5, max_age=timedelta(days=30))

    BackupBook(session).prune(retention, tenant.id)
    assert session.get(SiteBackup, backup.id, populate_existing=True).status == BackupStatus.RUNNING  # its job still runs

    committing(session).cancel_job(tenant.id, job.id)
    BackupBook(session).prune(retention, tenant.id)
    discarded = session.get(SiteBackup, backup.id, populate_existing=True)
    assert discarded.status == BackupStatus.FAILED and "ended before" in discarded.error
    assert not dump.exists()


def test_what_a_failed_backup_step_left_is_removed_and_kept_backups_are_not(session, tenant_factory, tmp_path):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    kept = make_backup(session, tenant, tmp_path / tenant.tenant.slug / "kept", timedelta(hours=1))
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    committing(session).cancel_job(tenant.id, job.id)
    left = tmp_path / tenant.tenant.slug / str(job.id)
    left.mkdir()
    (left / "half-written-database.sql.gz").write_bytes(b"\x1f\x8b")

    assert BackupBook(session).remove_strays(tmp_path) == []  # just written: perhaps by a job that just began
    assert BackupBook(session).remove_strays(tmp_path, settle=timedelta(0)) == [left]
    assert not left.exists()
    assert Path(kept.files[0]["path"]).exists()


def test_a_tenant_whose_slug_ends_in_a_newline_gets_no_backup_folder(session, sessions, tenant_factory, settings, tmp_path):
    """A tenant made before slugs were checked whole: its slug must not become a folder name."""
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    session.execute(update(Tenant).where(Tenant.id == tenant.id).values(slug=f"{tenant.tenant.slug}\n"))
    session.commit()
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    backups = tmp_path / "backups"
    JobRunner.for_settings(
        settings.model_copy(update={"backup_path": backups}), sessions, SimulatedDriver(step_seconds=0), "w@test"
    ).run(job.id)

    failed = read_job(sessions, job.id)
    assert failed.status == JobStatus.FAILED
    assert "no backup folder for this tenant: tenant slug" in failed.error, failed.error
    assert not backups.exists() or list(backups.iterdir()) == []


def test_a_backups_files_and_folders_are_readable_by_the_services_user_alone(
    settings, sessions, session, tenant_factory, tmp_path
):
    """They hold the site's whole database; with bench, its database password too (see test_bench_driver)."""
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    old_folder = tmp_path / tenant.tenant.slug
    old_folder.mkdir(mode=0o755)  # as a release before this one made it
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    JobRunner.for_settings(
        settings.model_copy(update={"backup_path": tmp_path}), sessions, SimulatedDriver(step_seconds=0), "w@test"
    ).run(job.id)

    assert session.get(ProvisioningJob, job.id, populate_existing=True).status == JobStatus.COMPLETED
    assert len(list(tmp_path.rglob("*.sql.gz"))) == 1
    assert not_private(tmp_path) == {}


def test_simulated_fail_step_verify_backup_fails_a_backup_job_at_that_step(settings, sessions, session, tenant_factory, tmp_path):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    told = settings.model_copy(update={"backup_path": tmp_path, "simulated_fail_step": "verify_backup"})
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    JobRunner.for_settings(told, sessions, make_driver(told), "w@test").run(job.id)

    failed = read_job(sessions, job.id)
    assert failed.status == JobStatus.FAILED and "stops before its end" in failed.error, failed.error
    assert [(step.name, step.status) for step in read_steps(sessions, job.id)] == [
        ("run_backup", StepStatus.COMPLETED), ("verify_backup", StepStatus.FAILED),
        ("copy_offsite", StepStatus.PENDING), ("record_backup", StepStatus.PENDING),
    ]  # fmt: skip
