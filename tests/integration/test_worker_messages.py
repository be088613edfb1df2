"""What a real worker does with the messages it receives: good ones, duplicates and poison."""

import uuid

from kombu import Connection
from sqlalchemy import func, select

from celeryconfig import RUN_JOB_TASK
from provisioning.enums import JobStatus, JobType, TenantStatus
from provisioning.models import JobStep, ProvisioningJob
from provisioning.service import ProvisioningService
from provisioning.workflows import workflow_for
from tests.helpers import wait_for


def job_status(sessions, job_id):
    with sessions() as session:
        return session.scalar(select(ProvisioningJob.status).where(ProvisioningJob.id == job_id))


def step_count(sessions, job_id) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(JobStep).where(JobStep.job_id == job_id))


def drain_dead_letters(settings) -> list:
    """Take every message out of this run's dead-letter queue."""
    messages = []
    with Connection(settings.broker_url) as connection:
        queue = connection.SimpleQueue(settings.dead_letter_queue_name, no_ack=True)
        try:
            while True:
                messages.append(queue.get(timeout=0.2))
        except queue.Empty:
            return messages
        finally:
            queue.close()


def duplicates_ignored(worker, job_id) -> int:
    return worker.output().count(f"job {job_id}: not pending any more")


def test_messages_that_name_no_job_are_dead_lettered_and_the_worker_keeps_working(
    worker, dispatcher, settings, session, sessions, tenant_factory
):
    drain_dead_letters(settings)
    unknown = str(uuid.uuid4())
    payloads = [{"job_id": "not-a-uuid"}, {"job_id": unknown}, {}, {"job_id": unknown, "site": "x"}]
    for payload in payloads:
        dispatcher.app.send_task(RUN_JOB_TASK, kwargs=payload, queue=settings.provisioning_queue_name)

    collected = []

    def all_dead_lettered():
        collected.extend(drain_dead_letters(settings))
        return len(collected) >= len(payloads)

    wait_for(all_dead_lettered, timeout=30, what="every bad message to be dead-lettered")
    assert sorted(map(str, (message.decode()[1] for message in collected))) == sorted(map(str, payloads))
    assert {message.headers["x-death"][0]["reason"] for message in collected} == {"rejected"}

    tenant = tenant_factory.create()
    good = ProvisioningService(session, dispatch=dispatcher.send_job).request_job(tenant.id, JobType.CREATE_SITE)
    wait_for(lambda: job_status(sessions, good.id) == JobStatus.COMPLETED, timeout=30, what="a good job after the poison")


def test_the_same_job_published_five_times_runs_its_steps_once(worker, dispatcher, session, sessions, tenant_factory):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = ProvisioningService(session).request_job(tenant.id, JobType.BACKUP_SITE)
    for _ in range(5):
        dispatcher.send_job(job.id)

    # The duplicates may all be turned away while the first delivery still runs the steps.
    wait_for(lambda: job_status(sessions, job.id) == JobStatus.COMPLETED, timeout=30, what="the job to complete")
    wait_for(lambda: duplicates_ignored(worker, job.id) >= 4, timeout=30, what="four deliveries to be ignored")
    assert duplicates_ignored(worker, job.id) == 4, worker.output()[-3000:]
    assert step_count(sessions, job.id) == len(workflow_for(JobType.BACKUP_SITE).steps)


def test_a_job_cancelled_while_its_message_waits_is_skipped_by_the_worker(worker, dispatcher, session, sessions, tenant_factory):
    tenant = tenant_factory.create()
    service = ProvisioningService(session)
    job = service.request_job(tenant.id, JobType.CREATE_SITE)
    service.cancel_job(tenant.id, job.id)

    dispatcher.send_job(job.id)

    wait_for(lambda: duplicates_ignored(worker, job.id) == 1, timeout=30, what="the worker to skip the job")
    assert job_status(sessions, job.id) == JobStatus.CANCELLED
    assert step_count(sessions, job.id) == 0
