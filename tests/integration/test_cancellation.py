"""Cancelling a running job on a real worker: a cooperative step stops at once, a step that
ignores the cancel is terminated after the grace period, and the worker goes on; and what the
heartbeat learns from the database for the step to read."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, update

from api import create_app
from provisioning.enums import JobStatus, JobType, Role, StepStatus, TenantStatus
from provisioning.jobs.heartbeat import Heartbeat
from provisioning.jobs.step_interruptions import GRACE_OVER, TAKEN_AWAY, StopFlags
from provisioning.models import JobStep, ProvisioningJob, Tenant
from tests.factories import TenantFactory
from tests.helpers import committing, wait_for
from tests.records import read_job
from tests.stack import WorkerProcess

JOBS = "/api/v1/provisioning/jobs"
QUICK = {
    "JOB_HEARTBEAT_SECONDS": "0.3",
    "LOST_JOB_AFTER_SECONDS": "5",
    "CANCEL_GRACE_SECONDS": "1",
    "SIMULATED_STEP_SECONDS": "60",
}


def job_row(isolated, job_id) -> ProvisioningJob:
    with isolated.sessions() as session:
        return session.get(ProvisioningJob, job_id)


@pytest.mark.parametrize(
    ("ignore_cancel", "step_message"),
    [("false", "Stopped by a cancel request"), ("true", "Terminated: it did not stop within the cancel's grace period")],
    ids=["cooperative-step", "step-ignoring-the-cancel"],
)
def test_a_running_create_is_cancelled_its_site_undone_and_the_worker_goes_on(isolated, ignore_cancel, step_message):
    with isolated.session() as session:
        tenant, other = TenantFactory(session).create(), TenantFactory(session).create()
    client = create_app(isolated.settings).test_client()
    worker = WorkerProcess({**isolated.environment, **QUICK, "SIMULATED_IGNORE_CANCEL": ignore_cancel}, isolated.dispatcher, 1)
    try:
        job_id = client.post(JOBS, json={"job_type": "create_site"}, headers=tenant.headers(Role.OWNER)).json["data"]["id"]
        wait_for(lambda: job_row(isolated, job_id).status == JobStatus.RUNNING, timeout=30, what="the job to start")

        asked = time.monotonic()
        answer = client.post(f"{JOBS}/{job_id}/cancel", headers=tenant.headers(Role.ADMIN))
        assert (answer.status_code, answer.json["data"]["status"]) == (202, "cancelling")
        again = client.post(f"{JOBS}/{job_id}/cancel", headers=tenant.headers(Role.ADMIN))
        assert (again.status_code, again.json["data"]["status"]) in {(202, "cancelling"), (200, "cancelled")}

        wait_for(lambda: job_row(isolated, job_id).status == JobStatus.CANCELLED, timeout=30, what="the job to be cancelled")
        took = time.monotonic() - asked
        assert took < 30, f"a 60-second step must not run to its end after a cancel (took {took:.1f}s)"
        with isolated.sessions() as session:
            step = session.scalars(select(JobStep).where(JobStep.job_id == job_id).order_by(JobStep.position)).first()
            assert (step.status, step.message) == (StepStatus.CANCELLED, step_message)
            assert session.get(Tenant, tenant.id).status == TenantStatus.PENDING
        finished = client.post(f"{JOBS}/{job_id}/cancel", headers=tenant.headers(Role.ADMIN))
        assert (finished.status_code, finished.json["data"]["status"]) == (200, "cancelled")

        # The same worker takes the next job (and lets go of it on a cancel too).
        with isolated.session() as session:
            service = committing(session, dispatch=isolated.dispatcher.send_job)
            later = service.request_job(other.id, JobType.CREATE_SITE)
            wait_for(
                lambda: (job_row(isolated, later.id).worker or "").startswith(worker.name),
                timeout=30,
                what="the worker to take the next job",
            )
            service.cancel_job(other.id, later.id)
        wait_for(lambda: job_row(isolated, later.id).status == JobStatus.CANCELLED, timeout=30, what="the next job's cancel")
    finally:
        worker.stop()


def _a_claimed_create(session, tenant_factory):
    """A create job claimed by ``w@test pid 1``, with the committing service that made it."""
    tenant = tenant_factory.create()
    service = committing(session)
    job = service.request_job(tenant.id, JobType.CREATE_SITE)
    service.start_job(job.id, "w@test pid 1")
    return service, tenant, job


def test_between_its_beats_the_heartbeat_looks_so_a_long_step_learns_of_a_cancel_within_seconds(
    session, sessions, tenant_factory
):
    """With the default ten-second heartbeat (here thirty), a cancel still reaches a running step in
    about a second: the heartbeat reads the job between its beats, and vouches only at a beat."""
    service, tenant, job = _a_claimed_create(session, tenant_factory)
    flags = StopFlags()
    with Heartbeat(sessions, job.id, "w@test pid 1", interval=30.0, cancel_grace=60.0, flags=flags):
        service.cancel_job(tenant.id, job.id)
        asked = time.monotonic()
        wait_for(flags.should_stop, timeout=10, what="the heartbeat to learn of the cancel")
        learnt_after = time.monotonic() - asked
    assert learnt_after < 3
    claimed = read_job(sessions, job.id)
    assert claimed.heartbeat_at == claimed.started_at, "a look vouches for nothing: the claim's heartbeat stands"


def test_the_heartbeat_learns_a_cancel_then_the_end_of_its_grace_period_then_that_the_job_was_taken_away(
    session, sessions, tenant_factory
):
    """The flags a running step reads, set from the database by the heartbeat alone."""
    service, tenant, job = _a_claimed_create(session, tenant_factory)
    flags = StopFlags()
    with Heartbeat(sessions, job.id, "w@test pid 1", interval=0.05, cancel_grace=1.0, flags=flags):
        first = wait_for(lambda: read_job(sessions, job.id).heartbeat_at, what="a beat on record")
        assert not flags.should_stop()

        service.cancel_job(tenant.id, job.id)
        wait_for(flags.should_stop, timeout=10, what="the heartbeat to learn of the cancel")
        asked = time.monotonic()
        wait_for(lambda: flags.must_stop() == GRACE_OVER, timeout=10, what="the grace period to be over")
        assert time.monotonic() - asked < 5

        with sessions() as other:  # the sweeper failed the job as lost, and a retry went elsewhere
            other.execute(update(ProvisioningJob).where(ProvisioningJob.id == job.id).values(worker="w@elsewhere pid 2"))
            other.commit()
        wait_for(flags.taken_away.is_set, timeout=10, what="the heartbeat to find the job taken away")
    assert flags.must_stop(stops_for_a_cancel=False) == TAKEN_AWAY
    assert read_job(sessions, job.id).heartbeat_at > first
