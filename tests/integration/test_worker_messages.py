"""What a real worker does with the messages it receives: good ones, duplicates and poison."""

import json
import uuid

from click.testing import CliRunner
from kombu import Connection
from sqlalchemy import func, select

from celeryconfig import RUN_JOB_TASK
from provisioning import logs
from provisioning.cli import main
from provisioning.dead_letters import list_dead_letters
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


def duplicates_ignored(worker, job_id) -> int:
    return worker.output().count(f"job {job_id}: not pending any more")


def test_every_message_a_worker_cannot_handle_is_dead_lettered_with_its_reason_and_the_worker_goes_on(
    worker, dispatcher, settings, session, sessions, tenant_factory, environment
):
    CliRunner().invoke(main, ["dlq", "purge", "--yes"], env=environment)
    unknown = str(uuid.uuid4())
    payloads = {
        "not-a-uuid": {"job_id": "not-a-uuid"},
        "names-no-job": {"job_id": unknown},
        "no-job-id": {},
        "extra-keys": {"job_id": unknown, "site": "x"},
    }
    for payload in payloads.values():
        dispatcher.app.send_task(RUN_JOB_TASK, kwargs=payload, queue=settings.provisioning_queue_name)
    dispatcher.app.send_task("provisioning.no_such_task", kwargs={"job_id": unknown}, queue=settings.provisioning_queue_name)
    with Connection(settings.broker_url) as connection:
        producer = connection.Producer()
        for body, content_type in ((b'{"job_id": ', "application/json"), (b'{"job_id": "x"}', "application/json")):
            producer.publish(
                body, routing_key=settings.provisioning_queue_name, content_type=content_type, content_encoding="utf-8"
            )

    letters = wait_for(
        lambda: found if len(found := list_dead_letters(settings)) >= 7 else None, timeout=30, what="seven dead letters"
    )
    reasons = sorted(letter.reason for letter in letters)
    assert any("is not a UUID" in reason for reason in reasons)
    assert any(f"job {unknown} does not exist" in reason for reason in reasons)
    assert sum("payload must be exactly" in reason for reason in reasons) == 2
    assert any("unknown task 'provisioning.no_such_task'" in reason for reason in reasons)
    assert any("cannot decode the body" in reason for reason in reasons)
    assert any("not a task message" in reason for reason in reasons)

    tenant = tenant_factory.create()
    good = ProvisioningService(session, dispatch=dispatcher.send_job).request_job(tenant.id, JobType.CREATE_SITE)
    wait_for(lambda: job_status(sessions, good.id) == JobStatus.COMPLETED, timeout=30, what="a good job after the poison")


def test_an_operator_lists_replays_and_purges_dead_letters(
    worker, dispatcher, settings, session, sessions, tenant_factory, environment
):
    cli = CliRunner()
    cli.invoke(main, ["dlq", "purge", "--yes"], env=environment)
    early = uuid.uuid4()
    # A message that arrived before its job existed, as a publish-before-commit bug would send it.
    dispatcher.app.send_task(
        RUN_JOB_TASK, kwargs={"job_id": str(early)}, task_id=str(early), queue=settings.provisioning_queue_name
    )
    wait_for(lambda: list_dead_letters(settings), timeout=30, what="the message to be dead-lettered")

    listed = cli.invoke(main, ["dlq", "list"], env=environment)
    assert listed.exit_code == 0
    assert str(early) in listed.output and "does not exist" in listed.output

    tenant = tenant_factory.create()
    session.add(
        ProvisioningJob(
            id=early, tenant_id=tenant.id, job_type=JobType.CREATE_SITE, status=JobStatus.PENDING, progress=0, message=""
        )
    )
    session.commit()
    replayed = cli.invoke(main, ["dlq", "replay", str(early)], env=environment)
    assert replayed.exit_code == 0, replayed.output
    wait_for(lambda: job_status(sessions, early) == JobStatus.COMPLETED, timeout=30, what="the replayed job to complete")
    assert list_dead_letters(settings) == []

    missing = cli.invoke(main, ["dlq", "replay", "no-such-id"], env=environment)
    assert missing.exit_code == 1 and "no dead letter with id 'no-such-id'" in missing.output

    dispatcher.app.send_task(RUN_JOB_TASK, kwargs={"job_id": "junk"}, queue=settings.provisioning_queue_name)
    wait_for(lambda: list_dead_letters(settings), timeout=30, what="another dead letter")
    purged = cli.invoke(main, ["dlq", "purge", "--yes"], env=environment)
    assert purged.exit_code == 0 and "purged 1 dead letter(s)" in purged.output
    assert list_dead_letters(settings) == []


def test_the_same_job_published_five_times_runs_its_steps_once(worker, dispatcher, session, sessions, tenant_factory):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = ProvisioningService(session).request_job(tenant.id, JobType.BACKUP_SITE)
    for _ in range(5):
        dispatcher.send_job(job.id)

    # The duplicates may all be turned away while the first delivery still runs the steps.
    wait_for(lambda: job_status(sessions, job.id) == JobStatus.COMPLETED, timeout=30, what="the job to complete")
    wait_for(lambda: duplicates_ignored(worker, job.id) >= 4, timeout=30, what="four deliveries to be ignored")
    assert duplicates_ignored(worker, job.id) == 4, worker.output()[-3000:]
    steps_run = [line for line in worker.output().splitlines() if f"job {job.id}: step " in line and "started" in line]
    assert len(steps_run) == len(workflow_for(JobType.BACKUP_SITE).steps), steps_run


def test_a_job_cancelled_while_its_message_waits_is_skipped_by_the_worker(worker, dispatcher, session, sessions, tenant_factory):
    tenant = tenant_factory.create()
    service = ProvisioningService(session)
    job = service.request_job(tenant.id, JobType.CREATE_SITE)
    service.cancel_job(tenant.id, job.id)

    dispatcher.send_job(job.id)

    wait_for(lambda: duplicates_ignored(worker, job.id) == 1, timeout=30, what="the worker to skip the job")
    assert job_status(sessions, job.id) == JobStatus.CANCELLED
    assert step_count(sessions, job.id) == 0


def test_the_request_id_in_a_message_is_bound_in_the_worker_for_every_line_of_its_job(
    worker, dispatcher, session, sessions, tenant_factory
):
    """The header alone carries it: this job's row has no request id of its own."""
    tenant = tenant_factory.create()
    job = ProvisioningService(session).request_job(tenant.id, JobType.CREATE_SITE)
    request_id = f"carried-{uuid.uuid4().hex}"
    with logs.bound(request_id=request_id):
        dispatcher.send_job(job.id)
    wait_for(lambda: job_status(sessions, job.id) == JobStatus.COMPLETED, timeout=30, what="the job to complete")

    lines = [json.loads(line) for line in worker.output().splitlines() if f'"job_id": "{job.id}"' in line]
    assert lines and {line.get("request_id") for line in lines} == {request_id}
