"""Scheduled backups, restore drills and standby pool refills, requested by the sweeper as ordinary jobs.

Every tenant with a site, open or suspended (a suspended tenant's data matters all the same), gets
a backup_site job once per BACKUP_INTERVAL_HOURS, counted from its last backup, or from the
creation of its site (a new site has nothing to keep yet); and each active tenant, once per
RESTORE_DRILL_INTERVAL_HOURS, a restore_drill of its newest completed backup, counted from its
last drill (a tenant without a completed backup has nothing to drill).

Whether a tenant is due is read from the jobs table (no job of the type created within the
interval), not from a schedule file: so a restarted sweeper, a second one, or a sweep at a
worker's start never asks twice, and a tenant whose backup was asked for by hand is not backed
up again right after it. A tenant busy with another job is skipped, and logged; the next sweep
asks again, so its job follows as soon as it is free.

A server's standby pool gets a refill_pool job whenever it lacks ready sites (and has room for
one more beyond the last free one), or holds sites to drop, and at least once every
POOL_CHECK_EVERY, to drop the sites the bench's changed apps made stale (``StandbyPool.wants_a_job``);
one at a time, as its pool tenant has one active job at most. After a pool job failed, its pool
waits POOL_RETRY_AFTER before the next: a bench that cannot make sites (an app missing) would fail
one every sweep otherwise. ``provisioning doctor`` says the pool is not being refilled.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import select

from provisioning.enums import BackupStatus, JobStatus, JobType, TenantStatus
from provisioning.errors import Conflict
from provisioning.jobs.requests import JobRequests
from provisioning.jobs.workflows import workflow_for
from provisioning.models import ACTIVE_JOB_STATUSES, ProvisioningJob, Server, SiteBackup, Tenant
from provisioning.platform.db import utcnow
from provisioning.servers.standby import StandbyPool

log = logging.getLogger(__name__)

SCHEDULER = "backup schedule"
DRILL_SCHEDULER = "restore drill schedule"
POOL_KEEPER = "standby pool"
POOL_RETRY_AFTER = timedelta(minutes=10)
# A pool with ready sites gets a job at least this often, which drops the stale ones.
POOL_CHECK_EVERY = timedelta(hours=1)


def _has_job(job_type: JobType, *conditions):
    """Whether the tenant has had a job of ``job_type`` that meets ``conditions``."""
    return (
        select(ProvisioningJob.id)
        .where(ProvisioningJob.tenant_id == Tenant.id, ProvisioningJob.job_type == job_type, *conditions)
        .exists()
    )


def schedule_backups(service: JobRequests, every: timedelta) -> list[uuid.UUID]:
    """Request a backup of each tenant with a site (active or suspended) not backed up within
    ``every``; returns the new jobs' ids."""
    since = utcnow() - every
    recent_backup = _has_job(JobType.BACKUP_SITE, ProvisioningJob.created_at >= since)
    recent_site = _has_job(
        JobType.CREATE_SITE, ProvisioningJob.status == JobStatus.COMPLETED, ProvisioningJob.completed_at >= since
    )
    return _request_for_each(service, JobType.BACKUP_SITE, SCHEDULER, ~recent_backup, ~recent_site)


def schedule_drills(service: JobRequests, every: timedelta) -> list[uuid.UUID]:
    """Request a restore drill of each active tenant with a completed backup and no drill within
    ``every``; returns the new jobs' ids."""
    has_backup = (
        select(SiteBackup.id).where(SiteBackup.tenant_id == Tenant.id, SiteBackup.status == BackupStatus.COMPLETED).exists()
    )
    recent_drill = _has_job(JobType.RESTORE_DRILL, ProvisioningJob.created_at >= utcnow() - every)
    return _request_for_each(service, JobType.RESTORE_DRILL, DRILL_SCHEDULER, has_backup, ~recent_drill)


def schedule_pool_refills(service: JobRequests) -> list[uuid.UUID]:
    """Request a refill_pool job for each server whose pool wants one, has none under way and had
    none fail within POOL_RETRY_AFTER."""
    pool = StandbyPool(service.session)
    busy = select(ProvisioningJob.id).where(
        ProvisioningJob.tenant_id == Tenant.id, ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES)
    )
    failed_lately = select(ProvisioningJob.id).where(
        ProvisioningJob.tenant_id == Tenant.id,
        ProvisioningJob.status == JobStatus.FAILED,
        ProvisioningJob.completed_at >= utcnow() - POOL_RETRY_AFTER,
    )
    not_now = select(Tenant.server_id).where(Tenant.status == TenantStatus.POOL, busy.exists() | failed_lately.exists())
    wanted = pool.wants_a_job(checked_since=utcnow() - POOL_CHECK_EVERY)
    servers = service.session.scalars(wanted.where(Server.id.not_in(not_now))).all()
    requested = []
    for server in servers:
        try:
            job = service.request_job(pool.pool_tenant(server), JobType.REFILL_POOL, actor=POOL_KEEPER)
        except Conflict as busy_now:
            service.uow.rollback()
            log.info("refill of the standby pool of %s skipped for now: %s", server.name, busy_now)
            continue
        service.uow.commit()
        requested.append(job.id)
    return requested


def _request_for_each(service: JobRequests, job_type: JobType, actor: str, *due) -> list[uuid.UUID]:
    """Request ``job_type`` for each tenant in a state the job type allows (``Workflow.allowed_tenant_states``)
    that meets the ``due`` conditions. Each request
    is committed on its own (and then published): one tenant's refusal costs no other tenant its job."""
    allowed = sorted(workflow_for(job_type).allowed_tenant_states)
    tenants = service.session.execute(
        select(Tenant.id, Tenant.slug).where(Tenant.status.in_(allowed), *due).order_by(Tenant.slug)
    ).all()
    service.uow.commit()
    requested = []
    for tenant_id, slug in tenants:
        try:
            job = service.request_job(tenant_id, job_type, actor=actor)
        except Conflict as busy:
            service.uow.rollback()
            log.info("scheduled %s of %s skipped for now: %s", job_type.value, slug, busy)
            continue
        service.uow.commit()
        requested.append(job.id)
    if requested:
        log.info("scheduled: requested %d %s job(s)", len(requested), job_type.value)
    return requested
