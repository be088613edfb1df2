"""Cancelling a running job on a real worker: a cooperative step stops at once, a step that
ignores the cancel is terminated after the grace period, and the worker goes on."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from api import create_app
from provisioning.enums import JobStatus, JobType, Role, StepStatus, TenantStatus
from provisioning.models import JobStep, ProvisioningJob, Tenant
from tests.factories import TenantFactory
from tests.helpers import committing, wait_for
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
