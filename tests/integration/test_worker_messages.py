"""What a real worker does with the messages it receives: good ones, duplicates and poison."""

import json
import uuid
from dataclasses import replace

import amqp.serialization
import pytest
from click.testing import CliRunner
from kombu import Connection
from sqlalchemy import func, select

from celeryconfig import RUN_JOB_TASK
from provisioning.cli import main
from provisioning.enums import JobStatus, JobType, TenantStatus
from provisioning.jobs.workflows import workflow_for
from provisioning.messaging.dead_letters import MAX_REASON_LENGTH, REASON_HEADER, list_dead_letters
from provisioning.models import JobStep, ProvisioningJob
from provisioning.platform import logs
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from tests.factories import TenantFactory
from tests.helpers import committing, wait_for
from tests.job_messages import COMPRESSED_POISON, POISON, RawMessage, job_message
from tests.stack import WorkerProcess


def job_status(sessions, job_id):
    with sessions() as session:
        return session.scalar(select(ProvisioningJob.status).where(ProvisioningJob.id == job_id))


def step_count(sessions, job_id) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(JobStep).where(JobStep.job_id == job_id))


def duplicates_ignored(worker, job_id) -> int:
    return worker.output().count(f"job {job_id}: not pending any more")


@pytest.fixture
def poison_worker(isolated):
    """A worker of the test's own on its own queue: a regression here must not take down the run's worker."""
    worker = WorkerProcess(isolated.environment, isolated.dispatcher, concurrency=1)
    yield worker
    worker.stop()


def queue_depth(settings, name: str) -> int:
    with Connection(settings.broker_url) as connection:
        return connection.default_channel.queue_declare(name, passive=True).message_count


def take_all(settings, name: str) -> list:
    """Every message of a queue as it is stored, its body neither decoded nor expanded by kombu."""
    taken = []
    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(queue=name, no_ack=True)) is not None:
            taken.append(message)
    return taken


def body_bytes(message) -> bytes:
    return message.body if isinstance(message.body, bytes) else message.body.encode(message.content_encoding)


def test_no_malformed_message_stops_the_worker_or_is_lost_each_is_dead_lettered_with_its_reason(isolated, poison_worker):
    settings, app = isolated.settings, isolated.dispatcher.app
    poison = [*POISON, *COMPRESSED_POISON]
    sent = {}
    names_no_job = job_message(app)
    with Connection(settings.broker_url) as connection:
        for name, make, _reason in poison:
            message = make(job_message(app))
            sent[name] = replace(message, headers={**message.headers, "x-poison": name})
            sent[name].publish(connection.default_channel, settings.provisioning_queue_name)
        names_no_job.publish(connection.default_channel, settings.provisioning_queue_name)

    expected = len(poison) + 1
    wait_for(
        lambda: queue_depth(settings, settings.dead_letter_queue_name) >= expected or poison_worker.process.poll() is not None,
        timeout=60,
        what=f"{expected} dead letters",
    )
    assert poison_worker.process.poll() is None, poison_worker.group.describe()
    letters = take_all(settings, settings.dead_letter_queue_name)
    by_poison = {letter.headers.get("x-poison"): letter for letter in letters}
    for name, _make, reason in poison:
        letter = by_poison[name]
        assert reason in letter.headers[REASON_HEADER], (name, letter.headers.get(REASON_HEADER))
        assert len(letter.headers[REASON_HEADER]) <= MAX_REASON_LENGTH
        assert body_bytes(letter) == sent[name].body, f"{name}: the dead letter is not the message as it came"
    (unknown_job,) = [letter for letter in letters if letter.headers.get("id") == names_no_job.headers["id"]]
    assert f"job {names_no_job.headers['id']} does not exist" in unknown_job.headers[REASON_HEADER]
    assert len(letters) == expected and queue_depth(settings, settings.provisioning_queue_name) == 0

    # The same worker, never restarted, still runs a good job, and never logged a line of megabytes.
    with isolated.session() as session:
        tenant = TenantFactory(session).create()
        good = committing(session, dispatch=isolated.dispatcher.send_job).request_job(tenant.id, JobType.CREATE_SITE)
    wait_for(lambda: job_status(isolated.sessions, good.id) == JobStatus.COMPLETED, timeout=30, what="a good job after poison")
    assert poison_worker.process.poll() is None
    output = poison_worker.output()
    assert "Unrecoverable error" not in output
    assert max(len(line) for line in output.splitlines()) < 4000


def test_a_message_whose_dead_letter_copy_is_too_big_for_a_frame_is_rejected_into_the_dead_letter_queue_not_looped_on(
    isolated, poison_worker
):
    """Headers travel in one AMQP frame: the original's fill it so that the reason added no longer fits."""
    settings = isolated.settings
    poison = replace(job_message(isolated.dispatcher.app), body=b'{"job_id": ')
    with Connection(settings.broker_url) as connection:
        frame_max = connection.default_channel.connection.frame_max
        room = frame_max - 8 - header_frame_size(poison) - 50
        padded = replace(poison, headers={**poison.headers, "x-padding": "p" * room})
        padded.publish(connection.default_channel, settings.provisioning_queue_name)

    wait_for(lambda: queue_depth(settings, settings.dead_letter_queue_name) == 1, timeout=30, what="the dead letter")
    (letter,) = list_dead_letters(settings)
    assert letter.id == poison.headers["id"] and letter.reason == "dead-lettered by RabbitMQ (rejected)"
    assert poison_worker.output().count("the dead-letter copy failed") == 1
    assert queue_depth(settings, settings.provisioning_queue_name) == 0 and poison_worker.process.poll() is None


def header_frame_size(message: RawMessage) -> int:
    """Bytes of the message's properties (headers included) in their AMQP content-header frame: the
    property flags (two bytes), then content type and encoding (short strings) and the headers (a table)."""
    return 2 + len(amqp.serialization.dumps(b"ssF", [message.content_type, message.content_encoding, message.headers]))


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
    assert purged.exit_code == 0 and purged.output.strip() == "purged 1 dead letter"
    assert list_dead_letters(settings) == []


def test_the_same_job_published_five_times_runs_its_steps_once(worker, dispatcher, session, sessions, tenant_factory):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    for _ in range(5):
        dispatcher.send_job(job.id, DEFAULT_SERVER_NAME)

    # The duplicates may all be turned away while the first delivery still runs the steps.
    wait_for(lambda: job_status(sessions, job.id) == JobStatus.COMPLETED, timeout=30, what="the job to complete")
    wait_for(lambda: duplicates_ignored(worker, job.id) >= 4, timeout=30, what="four deliveries to be ignored")
    assert duplicates_ignored(worker, job.id) == 4, worker.output()[-3000:]
    steps_run = [line for line in worker.output().splitlines() if f"job {job.id}: step " in line and "started" in line]
    assert len(steps_run) == len(workflow_for(JobType.BACKUP_SITE).steps), steps_run


def test_a_job_cancelled_while_its_message_waits_is_skipped_by_the_worker(worker, dispatcher, session, sessions, tenant_factory):
    tenant = tenant_factory.create()
    service = committing(session)
    job = service.request_job(tenant.id, JobType.CREATE_SITE)
    service.cancel_job(tenant.id, job.id)

    dispatcher.send_job(job.id, DEFAULT_SERVER_NAME)

    wait_for(lambda: duplicates_ignored(worker, job.id) == 1, timeout=30, what="the worker to skip the job")
    assert job_status(sessions, job.id) == JobStatus.CANCELLED
    assert step_count(sessions, job.id) == 0


def test_the_request_id_in_a_message_is_bound_in_the_worker_for_every_line_of_its_job(
    worker, dispatcher, session, sessions, tenant_factory
):
    """The header alone carries it: this job's row has no request id of its own."""
    tenant = tenant_factory.create()
    job = committing(session).request_job(tenant.id, JobType.CREATE_SITE)
    request_id = f"carried-{uuid.uuid4().hex}"
    with logs.bound(request_id=request_id):
        dispatcher.send_job(job.id, DEFAULT_SERVER_NAME)
    wait_for(lambda: job_status(sessions, job.id) == JobStatus.COMPLETED, timeout=30, what="the job to complete")

    lines = [json.loads(line) for line in worker.output().splitlines() if f'"job_id": "{job.id}"' in line]
    assert lines and {line.get("request_id") for line in lines} == {request_id}
