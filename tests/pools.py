"""Standby pools in tests: a sweep's refills, waited for until every pool job has ended."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from provisioning.enums import JobType
from provisioning.models import ACTIVE_JOB_STATUSES, ProvisioningJob
from provisioning.operations.sweeper import sweep
from tests.helpers import wait_for
from tests.records import read_job


def refilled(isolated, timeout: float = 60) -> list[ProvisioningJob]:
    """Sweep once, as the sweeper does every SWEEP_INTERVAL_SECONDS, and wait for the pool jobs it
    asked for, and any a worker's sweep at its start asked for before: the pools are then settled."""
    jobs = sweep(isolated.settings, isolated.sessions, isolated.dispatcher.send_job).pool_refills

    wait_for(lambda: pool_job_under_way(isolated) is None, timeout=timeout, interval=0.2, what="the pools' jobs to end")
    return [read_job(isolated.sessions, job_id) for job_id in jobs]


def pool_job_under_way(isolated) -> uuid.UUID | None:
    """The id of a pool job pending or running, if any."""
    with isolated.session() as session:
        return session.scalar(
            select(ProvisioningJob.id)
            .where(ProvisioningJob.job_type == JobType.REFILL_POOL, ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES))
            .limit(1)
        )
