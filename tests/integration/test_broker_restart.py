"""RabbitMQ stopped and started again while jobs are in flight: every job still reaches a final state.

The broker stopped is a node of the test's own (``tests.rabbitmq_node``), never the machine's.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from provisioning.enums import JobStatus, JobType
from provisioning.messaging.broker import Dispatcher
from provisioning.models import ProvisioningJob
from tests.factories import TenantFactory
from tests.helpers import committing, wait_for
from tests.stack import SweeperProcess, WorkerProcess

pytestmark = pytest.mark.disruptive  # stops and starts a RabbitMQ node of its own

FAST = {
    "JOB_HEARTBEAT_SECONDS": "0.5",
    "LOST_JOB_AFTER_SECONDS": "5",
    "SWEEP_INTERVAL_SECONDS": "1",
    "SIMULATED_STEP_SECONDS": "0.3",
}
JOBS = 12


def test_every_job_reaches_a_final_state_across_a_broker_restart(isolated, broker, tmp_path):
    dispatcher = Dispatcher(isolated.settings.model_copy(update={"broker_url": broker.url}))
    with isolated.session() as session:
        service = committing(session, dispatch=dispatcher.send_job)
        job_ids = [service.request_job(TenantFactory(session).create().id, JobType.CREATE_SITE).id for _ in range(JOBS)]
    env = {**isolated.environment, **FAST, "RABBITMQ_URL": broker.url}
    workers = [WorkerProcess(env, dispatcher, concurrency=1) for _ in range(2)]
    sweeper = SweeperProcess(env, tmp_path)

    def count(*statuses: JobStatus) -> int:
        with isolated.sessions() as s:
            return s.scalar(
                select(func.count())
                .select_from(ProvisioningJob)
                .where(ProvisioningJob.id.in_(job_ids), ProvisioningJob.status.in_(statuses))
            )

    try:
        wait_for(lambda: count(JobStatus.COMPLETED) >= 2, timeout=60, what="the first jobs to complete")
        broker.stop_app()  # in flight: some jobs running, the rest queued
        broker.start_app()

        final = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
        wait_for(lambda: count(*final) == JOBS, timeout=120, interval=0.5, what="every job to reach a final state")
        # Workers keep running their job through the outage; its redelivered message is a duplicate.
        assert count(JobStatus.COMPLETED) == JOBS
        assert all(worker.process.poll() is None for worker in workers), "the workers reconnect by themselves"
    finally:
        sweeper.stop()
        for worker in workers:
            worker.stop()
