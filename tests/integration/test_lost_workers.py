"""No job runs forever: a worker that dies mid-step is detected through its heartbeat."""

from __future__ import annotations

import os
import signal
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from provisioning.enums import JobStatus, JobType, StepStatus, TenantStatus
from provisioning.jobs.records import StepRecord
from provisioning.jobs.runner import JobRunner
from provisioning.jobs.service import ProvisioningService
from provisioning.jobs.workflows import workflow_for
from provisioning.models import JobStep, ProvisioningJob
from provisioning.platform.db import utcnow
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.factories import TenantFactory
from tests.helpers import committing, recording, wait_for
from tests.records import NO_STANDBY, create_stopped_at, read_job, tenant_status
from tests.stack import SweeperProcess, WorkerProcess

pytestmark = pytest.mark.disruptive  # SIGKILLs workers and their pool processes, and times heartbeats

# Short deadlines so a lost worker is noticed within seconds.
FAST = {"JOB_HEARTBEAT_SECONDS": "0.5", "LOST_JOB_AFTER_SECONDS": "3", "SWEEP_INTERVAL_SECONDS": "1"}


def steps_by_status(sessions, job_id) -> dict[str, StepStatus]:
    with sessions() as session:
        return {step.name: step.status for step in session.scalars(select(JobStep).where(JobStep.job_id == job_id))}


def age_heartbeat(sessions, job_id, seconds: float) -> None:
    with sessions() as session:
        session.execute(
            update(ProvisioningJob).where(ProvisioningJob.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )
        session.commit()


def test_a_job_without_a_heartbeat_is_failed_naming_its_worker_and_step_and_the_tenant_is_released(
    session, sessions, tenant_factory
):
    tenant = tenant_factory.create()
    service = committing(session)
    job = service.request_job(tenant.id, JobType.CREATE_SITE)
    service.start_job(job.id, "worker@crashed-host")
    create = workflow_for(JobType.CREATE_SITE)
    service.write_steps(job.id, "worker@crashed-host", [], StepRecord.started(0, create.steps[0]))
    # As the worker writes them: the check done, no standby site to claim, create_site started.
    checked = StepRecord(
        0, "check_preconditions", StepStatus.COMPLETED, finished_at=utcnow(), output="ok", progress=create.progress_after(1)
    )
    no_claim = StepRecord(1, "claim_standby", StepStatus.SKIPPED, finished_at=utcnow(), message=NO_STANDBY)
    at = create.position_of("create_site")
    service.write_steps(job.id, "worker@crashed-host", [checked, no_claim], StepRecord.started(at, create.steps[at]))
    age_heartbeat(sessions, job.id, 120)

    assert job.id in service.reap_lost_jobs(timedelta(seconds=60))

    lost = read_job(sessions, job.id)
    assert lost.status == JobStatus.FAILED
    assert "worker@crashed-host" in lost.error and "create_site" in lost.error
    assert steps_by_status(sessions, job.id)["create_site"] == StepStatus.FAILED
    assert tenant_status(sessions, tenant.id) == TenantStatus.FAILED
    retry = service.retry_job(tenant.id, job.id)
    assert retry.status == JobStatus.PENDING


def test_a_worker_lost_while_it_settled_a_cancel_is_reaped_saying_so(session, sessions, tenant_factory):
    tenant = tenant_factory.create()
    service = committing(session)
    job = service.request_job(tenant.id, JobType.CREATE_SITE)
    service.start_job(job.id, "worker@crashed-host")
    service.cancel_job(tenant.id, job.id)
    service.end_step(job.id, "worker@crashed-host", 0, StepStatus.CANCELLED, "Stopped by a cancel request")
    age_heartbeat(sessions, job.id, 120)

    assert job.id in service.reap_lost_jobs(timedelta(seconds=60))
    assert read_job(sessions, job.id).error.startswith("worker worker@crashed-host was lost while it settled a cancel: ")


def test_a_job_whose_worker_still_beats_is_left_alone(session, sessions, tenant_factory):
    tenant = tenant_factory.create()
    service = committing(session)
    job = service.request_job(tenant.id, JobType.CREATE_SITE)
    service.start_job(job.id, "worker@alive")
    age_heartbeat(sessions, job.id, 10)

    assert service.beat_heartbeat(job.id, "worker@alive")
    assert not service.beat_heartbeat(job.id, "worker@impostor")
    assert job.id not in service.reap_lost_jobs(timedelta(seconds=5))
    assert read_job(sessions, job.id).status == JobStatus.RUNNING


def test_a_running_job_keeps_its_heartbeat_fresh_and_a_reaped_one_is_left_by_its_slow_worker(
    settings, session, sessions, tenant_factory
):
    tenant = tenant_factory.create()
    job = committing(session).request_job(tenant.id, JobType.CREATE_SITE)
    runner = JobRunner.for_settings(settings, sessions, SimulatedDriver(step_seconds=30), worker="worker@slow")
    runner.heartbeat_seconds = 0.2
    thread = threading.Thread(target=runner.run, args=(job.id,), daemon=True)
    thread.start()
    first = wait_for(lambda: read_job(sessions, job.id).heartbeat_at, what="the first heartbeat")
    wait_for(lambda: read_job(sessions, job.id).heartbeat_at > first, timeout=10, what="the heartbeat to move on")
    assert StepStatus.RUNNING in steps_by_status(sessions, job.id).values(), "the step is on record as it starts"

    # The worker is alive but, say, was cut off long enough for the sweeper to give up on it.
    with sessions() as s:
        s.execute(update(ProvisioningJob).where(ProvisioningJob.id == job.id).values(worker="worker@other"))
        s.commit()
    age_heartbeat(sessions, job.id, 120)
    assert job.id in committing(session).reap_lost_jobs(timedelta(seconds=60))
    thread.join(timeout=10)

    assert not thread.is_alive(), "the slow worker must notice that the job is no longer its own"
    assert read_job(sessions, job.id).status == JobStatus.FAILED
    assert set(steps_by_status(sessions, job.id).values()) == {StepStatus.FAILED, StepStatus.PENDING}


class FreezesAt(SimulatedDriver):
    """Quick steps; in the one named ``step`` the worker freezes, as one killed there stops for good,
    until the test lets it go (``thaw``)."""

    def __init__(self, step: str):
        super().__init__(step_seconds=0)
        self.step = step
        self.frozen, self.thaw = threading.Event(), threading.Event()

    def run_step(self, step, context):
        if step == self.step:
            self.frozen.set()
            self.thaw.wait(30)
        return super().run_step(step, context)


def test_a_worker_lost_during_a_quick_step_is_reaped_naming_that_step_and_its_retry_resumes_there(
    settings, session, sessions, tenant_factory
):
    tenant = tenant_factory.create()
    service = committing(session)
    job = service.request_job(tenant.id, JobType.CREATE_SITE)
    driver = FreezesAt("install_apps")
    runner = JobRunner.for_settings(settings, sessions, driver, worker="worker@frozen")
    runner.heartbeat_seconds = 3600  # a dead worker beats no more: the first beat is due long after the test
    thread = threading.Thread(target=runner.run, args=(job.id,), daemon=True)
    thread.start()
    try:
        assert driver.frozen.wait(30), "the job never reached install_apps"
        age_heartbeat(sessions, job.id, 120)
        assert job.id in service.reap_lost_jobs(timedelta(seconds=60))
    finally:
        driver.thaw.set()
        thread.join(timeout=10)

    lost = read_job(sessions, job.id)
    assert lost.error.startswith("worker worker@frozen was lost during step install_apps: no heartbeat since"), lost.error
    assert steps_by_status(sessions, job.id) == create_stopped_at("install_apps", StepStatus.FAILED)
    assert tenant_status(sessions, tenant.id) == TenantStatus.FAILED
    assert service.retry_job(tenant.id, job.id).resume_from == "install_apps"


@pytest.fixture
def sweeper(isolated, tmp_path):
    """The sweeper, as the Procfile runs it, sweeping every second."""
    process = SweeperProcess({**isolated.environment, **FAST}, tmp_path)
    yield process
    print(process.stop())  # shown by pytest when the test failed


def wait_until_failed(sessions, job_id) -> ProvisioningJob:
    return wait_for(
        lambda: (row := read_job(sessions, job_id)).status == JobStatus.FAILED and row,
        timeout=30,
        what="the lost job to be failed",
    )


def wait_until_in_first_step(sessions, job_id) -> None:
    wait_for(
        lambda: steps_by_status(sessions, job_id).get("check_preconditions") == StepStatus.RUNNING,
        timeout=30,
        what="the job's first step to run",
    )


def slow_worker(isolated, **extra) -> WorkerProcess:
    return WorkerProcess(
        {**isolated.environment, **FAST, "SIMULATED_STEP_SECONDS": "30", **extra}, isolated.dispatcher, concurrency=1
    )


def test_a_killed_worker_is_noticed_and_a_retry_on_the_next_worker_completes(isolated, sweeper):
    with isolated.session() as session:
        tenant = TenantFactory(session).create()
        service = committing(session, dispatch=isolated.dispatcher.send_job)
        job = service.request_job(tenant.id, JobType.CREATE_SITE)
        doomed = slow_worker(isolated)
        wait_until_in_first_step(isolated.sessions, job.id)

        doomed.kill()
        successor = slow_worker(isolated, SIMULATED_STEP_SECONDS="0")
        try:
            lost = wait_until_failed(isolated.sessions, job.id)
            assert doomed.name in lost.error and "check_preconditions" in lost.error
            # Lost before create_site, the job had made nothing: the tenant is as it was.
            assert tenant_status(isolated.sessions, tenant.id) == TenantStatus.PENDING

            retry = service.retry_job(tenant.id, job.id)
            wait_for(lambda: read_job(isolated.sessions, retry.id).status == JobStatus.COMPLETED, timeout=30, what="the retry")
            assert tenant_status(isolated.sessions, tenant.id) == TenantStatus.ACTIVE
        finally:
            successor.stop()


def test_a_killed_pool_process_is_noticed_while_its_worker_lives_on(isolated, sweeper):
    with isolated.session() as session:
        tenant = TenantFactory(session).create()
        job = committing(session, dispatch=isolated.dispatcher.send_job).request_job(tenant.id, JobType.CREATE_SITE)
    worker = slow_worker(isolated)
    try:
        wait_until_in_first_step(isolated.sessions, job.id)
        for pid in worker.pool_processes():
            os.kill(pid, signal.SIGKILL)

        lost = wait_until_failed(isolated.sessions, job.id)
        assert worker.name in lost.error and "check_preconditions" in lost.error
        assert worker.process.poll() is None, "the worker itself lives on and keeps serving"
    finally:
        worker.stop()


def test_a_worker_whose_job_was_taken_away_stops_even_a_deaf_step_and_writes_nothing(isolated):
    """As when the sweeper declared a cut-off worker lost and a retry went elsewhere."""
    with isolated.session() as session:
        tenant = TenantFactory(session).create()
        job = committing(session, dispatch=isolated.dispatcher.send_job).request_job(tenant.id, JobType.CREATE_SITE)
    worker = slow_worker(isolated, SIMULATED_IGNORE_CANCEL="true", SIMULATED_STEP_SECONDS="60")
    try:
        wait_until_in_first_step(isolated.sessions, job.id)
        with isolated.sessions() as s:
            s.execute(update(ProvisioningJob).where(ProvisioningJob.id == job.id).values(worker="worker@elsewhere pid 1"))
            s.commit()

        wait_for(lambda: "no longer this worker's to run" in worker.output(), timeout=30, what="the worker to step aside")
        after = read_job(isolated.sessions, job.id)
        assert (after.status, after.progress, after.worker) == (JobStatus.RUNNING, 0, "worker@elsewhere pid 1")
        assert steps_by_status(isolated.sessions, job.id)["check_preconditions"] == StepStatus.RUNNING
        assert "step create_site started" not in worker.output()
        assert worker.process.poll() is None
    finally:
        worker.stop()


def test_a_job_that_waits_unclaimed_is_published_again_with_a_doubling_wait(session, sessions, tenant_factory):
    sent: list = []
    tenant = tenant_factory.create()
    service = committing(session, dispatch=recording(sent))
    job = service.request_job(tenant.id, JobType.CREATE_SITE)

    def published_minutes_ago(minutes: float) -> None:
        with sessions() as s:
            s.execute(
                update(ProvisioningJob)
                .where(ProvisioningJob.id == job.id)
                .values(dispatched_at=utcnow() - timedelta(minutes=minutes))
            )
            s.commit()

    def republished_now() -> bool:
        before = len(sent)
        service.republish_pending(timedelta(minutes=5))
        return job.id in sent[before:]

    published_minutes_ago(6)
    assert republished_now(), "published once, unclaimed for 5 minutes: again"
    published_minutes_ago(6)
    assert not republished_now(), "published twice: it waits 10 minutes"
    published_minutes_ago(11)
    assert republished_now()
    assert sent.count(job.id) == 3


def test_a_job_committed_but_never_published_is_published_by_the_next_sweep(session, sessions, tenant_factory):
    """As when the requesting process dies between its commit and its publish: the job is not
    marked sent (the mark follows the publish), so the next sweep publishes it, not one five
    minutes later."""
    sent: list = []
    tenant = tenant_factory.create()
    job = ProvisioningService(session, dispatch=recording(sent)).request_job(tenant.id, JobType.CREATE_SITE)
    session.commit()  # the transaction, but none of what follows its commit: the process is gone
    assert sent == [] and read_job(sessions, job.id).dispatched_at is None

    # (Other tests' jobs made with no publisher may be republished too.)
    assert job.id in committing(session, dispatch=recording(sent)).republish_pending(timedelta(minutes=5))
    assert sent.count(job.id) == 1
    assert read_job(sessions, job.id).dispatched_at is not None, "marked once it was published"


def test_a_published_job_is_marked_sent_and_not_published_again_by_the_next_sweep(session, sessions, tenant_factory):
    sent: list = []
    tenant = tenant_factory.create()
    job = committing(session, dispatch=recording(sent)).request_job(tenant.id, JobType.CREATE_SITE)
    assert sent == [job.id] and job.dispatched_at is not None
    assert read_job(sessions, job.id).dispatch_count == 1

    # (The run's database is shared: other tests' unpublished jobs may go out with this sweep.)
    assert job.id not in committing(session, dispatch=recording(sent)).republish_pending(timedelta(minutes=5))
    assert sent.count(job.id) == 1
