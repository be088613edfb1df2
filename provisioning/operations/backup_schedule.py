"""Scheduled backups: every active tenant gets a backup_site job once per BACKUP_INTERVAL_HOURS,
counted from its last backup, or from the creation of its site (a new site has nothing to keep yet).

Whether a tenant is due is read from the jobs table (no backup_site job created within the
interval), not from a schedule file: so a restarted sweeper, a second one, or a sweep
at a worker's start never backs a tenant up twice, and a tenant whose backup was asked for by
hand is not backed up again right after it. A tenant busy with another job is skipped, and
logged; the next sweep asks again, so its backup follows as soon as it is free.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import select

from provisioning.enums import JobStatus, JobType, TenantStatus
from provisioning.errors import Conflict
from provisioning.jobs.requests import JobRequests
from provisioning.models import ProvisioningJob, Tenant
from provisioning.platform.db import utcnow

log = logging.getLogger(__name__)

SCHEDULER = "backup schedule"


def schedule_backups(service: JobRequests, every: timedelta) -> list[uuid.UUID]:
    """Request a backup of each active tenant not backed up within ``every``; returns the new jobs'
    ids. Each request is committed on its own (and then published): one tenant's refusal costs
    no other tenant its backup."""
    since = utcnow() - every
    recent_backup = (
        select(ProvisioningJob.id)
        .where(
            ProvisioningJob.tenant_id == Tenant.id,
            ProvisioningJob.job_type == JobType.BACKUP_SITE,
            ProvisioningJob.created_at >= since,
        )
        .exists()
    )
    recent_site = (
        select(ProvisioningJob.id)
        .where(
            ProvisioningJob.tenant_id == Tenant.id,
            ProvisioningJob.job_type == JobType.CREATE_SITE,
            ProvisioningJob.status == JobStatus.COMPLETED,
            ProvisioningJob.completed_at >= since,
        )
        .exists()
    )
    due = service.session.execute(
        select(Tenant.id, Tenant.slug)
        .where(Tenant.status == TenantStatus.ACTIVE, ~recent_backup, ~recent_site)
        .order_by(Tenant.slug)
    ).all()
    service.uow.commit()
    requested = []
    for tenant_id, slug in due:
        try:
            job = service.request_job(tenant_id, JobType.BACKUP_SITE, actor=SCHEDULER)
        except Conflict as busy:
            service.uow.rollback()
            log.info("scheduled backup of %s skipped for now: %s", slug, busy)
            continue
        service.uow.commit()
        requested.append(job.id)
    if requested:
        log.info("scheduled backups: requested %d", len(requested))
    return requested
