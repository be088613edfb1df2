"""Job events: every transition and step in order, with its actor, and status changes on the exchange."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import uuid
from contextlib import contextmanager

import pytest
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError
from sqlalchemy import select

from api import create_app
from celeryconfig import events_exchange
from provisioning.enums import JobStatus, JobType, Role, TenantStatus
from provisioning.jobs.runner import JobRunner
from provisioning.messaging.events import UNANNOUNCED, ConfirmedPublisher, EventRelay, announcement
from provisioning.models import JobEvent, ProvisioningJob
from provisioning.operations.quickstart import wait_until_answering
from provisioning.operations.sweeper import run_sweeper
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.factories import TenantFactory
from tests.helpers import StrictClient, committing, wait_for
from tests.processes import GroupProcess, free_port
from tests.records import NO_STANDBY
from tests.stack import SweeperProcess, TcpRelay, WorkerProcess, events_heard, process_environment

JOBS = "/api/v1/provisioning/jobs"
# The steps of a create_site that make the site (a claimed standby site skips them).
MAKING_STEPS = ["create_site", "install_apps", "configure_site", "verify_site"]


@pytest.fixture
def client(app):
    app.test_client_class = StrictClient
    return app.test_client()


def events(client, tenant, job_id) -> list[dict]:
    response = client.get(f"{JOBS}/{job_id}/events", headers=tenant.headers(Role.MEMBER))
    assert response.status_code == 200
    return response.json["data"]


def run(settings, sessions, job_id, fail_step: str | None = None) -> None:
    JobRunner.for_settings(settings, sessions, SimulatedDriver(step_seconds=0, fail_step=fail_step), "w@test pid 1").run(job_id)


def test_a_completed_job_tells_its_whole_story_in_order(client, session, sessions, tenant_factory, settings):
    tenant = tenant_factory.create()
    job = committing(session, dispatch=lambda _id, _server: None).request_job(
        tenant.id, JobType.CREATE_SITE, tenant.users[Role.OWNER].id
    )
    run(settings, sessions, job.id)

    story = events(client, tenant, job.id)
    made = [kind for step in MAKING_STEPS for kind in (("step_started", step), ("step_completed", step))]
    assert [(e["kind"], e["detail"]) for e in story] == [
        ("created", ""),
        ("dispatched", ""),
        ("claimed", ""),
        ("step_started", "check_preconditions"),
        ("step_completed", "check_preconditions"),
        ("step_skipped", f"claim_standby: {NO_STANDBY}"),  # no standby site was ready
        *made,
        ("completed", ""),
    ]
    assert story[0]["actor"] == f"user {tenant.users[Role.OWNER].id}"
    assert {e["actor"] for e in story[2:]} == {"worker w@test pid 1"}
    assert [e["id"] for e in story] == sorted(e["id"] for e in story)


def test_a_failed_job_ends_with_the_failed_step_and_the_error(client, session, sessions, tenant_factory, settings):
    tenant = tenant_factory.create()
    job = committing(session).request_job(tenant.id, JobType.CREATE_SITE)
    run(settings, sessions, job.id, fail_step="install_apps")

    story = events(client, tenant, job.id)
    assert [e["kind"] for e in story[-3:]] == ["step_started", "step_failed", "failed"]
    assert story[-2]["detail"].startswith("install_apps: step install_apps failed")
    assert "install_apps" in story[-1]["detail"]
    assert story[0]["actor"] == "operator"


def test_a_cancelled_job_says_who_cancelled_it(client, session, tenant_factory):
    tenant = tenant_factory.create()
    job = committing(session).request_job(tenant.id, JobType.CREATE_SITE)
    assert client.post(f"{JOBS}/{job.id}/cancel", headers=tenant.headers(Role.ADMIN)).status_code == 200

    story = events(client, tenant, job.id)
    assert [e["kind"] for e in story] == ["created", "cancelled"]
    assert story[-1]["actor"] == f"user {tenant.users[Role.ADMIN].id}"


def test_a_retry_is_linked_both_ways(client, session, sessions, tenant_factory, settings):
    tenant = tenant_factory.create()
    first = committing(session).request_job(tenant.id, JobType.CREATE_SITE)
    run(settings, sessions, first.id, fail_step="create_site")
    retry = client.post(f"{JOBS}/{first.id}/retry", headers=tenant.headers(Role.OWNER)).json["data"]

    assert events(client, tenant, first.id)[-1] | {"id": 0, "created_at": ""} == {
        "id": 0,
        "created_at": "",
        "kind": "retried",
        "actor": f"user {tenant.users[Role.OWNER].id}",
        "detail": f"retried as {retry['id']}",
    }
    assert events(client, tenant, retry["id"])[0]["detail"] == f"retry of {first.id}, resuming at create_site"


@contextmanager
def relaying(settings, sessions):
    """The event relay as the sweeper runs it, in a thread of the test's own."""
    relay = EventRelay(settings, sessions)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


def completed(job_id):
    return lambda payload: payload["job_id"] == str(job_id) and payload["status"] == "completed"


def of_job(messages, job_id) -> list[tuple[str, str]]:
    return [(m.delivery_info["routing_key"], m.payload["event"]) for m in messages if m.payload["job_id"] == str(job_id)]


def test_a_consumer_bound_to_the_exchange_hears_each_status_change(
    settings, worker, dispatcher, session, sessions, tenant_factory, listener
):
    hear, heard = listener
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    with relaying(settings, sessions):
        create_app(settings).test_client().post(JOBS, json={"job_type": "backup_site"}, headers=tenant.headers(Role.OWNER))
        job_id = session.scalar(select(ProvisioningJob.id).where(ProvisioningJob.tenant_id == tenant.id))
        hear(completed(job_id))

    assert of_job(heard, job_id) == [("job.pending", "created"), ("job.running", "claimed"), ("job.completed", "completed")]
    last = heard[-1].payload
    assert set(last) == {"event_id", "job_id", "status", "event", "actor", "detail", "at"}
    assert last["actor"].startswith("worker ")


def test_while_the_broker_is_unreachable_events_wait_and_go_out_in_order_once_it_answers(
    settings, session, sessions, tenant_factory, listener
):
    hear, heard = listener
    tenant = tenant_factory.create()
    job = committing(session).request_job(tenant.id, JobType.CREATE_SITE)
    run(settings, sessions, job.id)
    unreachable = EventRelay(settings.model_copy(update={"broker_url": "amqp://guest:guest@127.0.0.1:1//"}), sessions)

    with pytest.raises(OperationalError):
        unreachable.relay()
    assert session.get(ProvisioningJob, job.id).status == JobStatus.COMPLETED, "a job never waits for its events"
    assert waiting_events(session, job.id) == ["created", "claimed", "completed"]

    with relaying(settings, sessions):
        hear(completed(job.id))
    assert of_job(heard, job.id) == [("job.pending", "created"), ("job.running", "claimed"), ("job.completed", "completed")]
    assert waiting_events(session, job.id) == []


def test_an_event_published_but_not_marked_goes_out_again_with_the_same_event_id(
    settings, session, sessions, tenant_factory, listener
):
    hear, heard = listener
    tenant = tenant_factory.create()
    job = committing(session).request_job(tenant.id, JobType.CREATE_SITE)
    created = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.kind == "created")).one()
    publisher = ConfirmedPublisher(settings)
    publisher.publish([announcement(created)])  # then the relay stops, before it could mark the event
    publisher.close()

    with relaying(settings, sessions):
        hear(lambda payload: payload["job_id"] == str(job.id) and len(of_job(heard, job.id)) == 2)
    assert [m.payload["event_id"] for m in heard if m.payload["job_id"] == str(job.id)] == [created.id, created.id]


def test_a_batch_after_its_connection_died_goes_out_on_a_new_one(settings, listener):
    hear, heard = listener
    relay = TcpRelay(settings.broker_url)
    publisher = ConfirmedPublisher(settings.model_copy(update={"broker_url": relay.url}))
    publisher.publish([("job.pending", {"job_id": "first"})])
    relay.cut()  # as a broker restart leaves it: dead under the publisher

    with pytest.raises((OSError, OperationalError)):
        publisher.publish([("job.pending", {"job_id": "second"})])
    publisher.publish([("job.pending", {"job_id": "second"})])  # the relay's next round
    hear(lambda payload: payload["job_id"] == "second")
    publisher.close()
    relay.close()
    assert [m.payload["job_id"] for m in heard] == ["first", "second"]


def test_the_sweeper_process_sweeps_at_once_relays_the_events_and_stops_by_itself_on_ctrl_c(isolated, tmp_path):
    with isolated.session() as session:
        job = committing(session).request_job(TenantFactory(session).create().id, JobType.CREATE_SITE)
        assert job.dispatched_at is None, "created with no publisher: only a sweep sends it"
    with events_heard(isolated.settings) as (hear, heard):
        sweeper = SweeperProcess(isolated.environment, tmp_path)
        try:
            hear(lambda payload: payload["job_id"] == str(job.id))
        finally:
            sweeper.group.signal_group(signal.SIGINT)
            stopped = sweeper.group.wait_stopped(timeout=30)
    assert of_job(heard, job.id) == [("job.pending", "created")]
    with isolated.session() as session:
        assert session.get(ProvisioningJob, job.id).dispatched_at is not None, "the sweep at start published the job"
    # Ctrl-C reaches the whole group, ``sh -c`` of the Procfile line included: the sweeper's own
    # last line says that it finished what it was doing and stopped.
    assert stopped and sweeper.group.output().strip().splitlines()[-1].endswith('"sweeper: stopped"}'), sweeper.group.describe()
    assert "Traceback" not in sweeper.group.output()


def waiting_events(session, job_id) -> list[str]:
    """The job's status changes not announced yet, oldest first."""
    session.expire_all()
    return session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id, *UNANNOUNCED).order_by(JobEvent.id)).all()


def test_once_a_worker_has_started_a_consumer_can_bind_to_the_durable_topic_exchange_before_any_event(isolated):
    worker = WorkerProcess(isolated.environment, isolated.dispatcher)
    try:
        with Connection(isolated.settings.broker_url) as connection:
            channel = connection.channel()
            name = f"{isolated.settings.provisioning_queue_name}.events"
            Exchange(name)(channel).declare(passive=True)  # there, though nothing was announced yet
            # Declared as the README states it: RabbitMQ refuses a declaration that differs from the exchange.
            stated = Exchange(name, type="topic", durable=True)
            Queue(f"billing-{uuid.uuid4().hex[:6]}", exchange=stated, routing_key="job.*", exclusive=True)(channel).declare()
    finally:
        worker.stop()


@pytest.fixture
def embedded_broker(tmp_path):
    """The quickstart's embedded broker (a Redis emulation), in a process of its own."""
    port = free_port()
    env = process_environment({"EMBEDDED_BROKER_PORT": str(port), "DATA_DIR": str(tmp_path)})
    broker = GroupProcess(
        "embedded broker", [sys.executable, "-m", "provisioning.cli", "embedded-broker"], env, tmp_path / "broker.log"
    )
    try:
        assert wait_until_answering(port, timeout=30), broker.describe()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        broker.stop()


def test_on_the_embedded_broker_announcements_reach_a_bound_consumer_without_publisher_confirms(settings, embedded_broker):
    embedded = settings.model_copy(update={"broker_url": embedded_broker})
    with Connection(embedded_broker) as connection:
        listener = connection.SimpleQueue(Queue("billing", exchange=events_exchange(embedded), routing_key="job.*"))
        publisher = ConfirmedPublisher(embedded)
        publisher.publish([("job.pending", {"job_id": "first"}), ("job.completed", {"job_id": "first"})])
        publisher.close()
        heard = [listener.get(timeout=5) for _ in range(2)]
        listener.close()
    assert [(message.delivery_info["routing_key"], message.payload) for message in heard] == [
        ("job.pending", {"job_id": "first"}), ("job.completed", {"job_id": "first"}),
    ]  # fmt: skip


def test_a_sweeper_whose_database_is_missing_says_so_at_each_sweep_and_goes_on_until_stopped(isolated, caplog):
    """A sweep that fails (the database gone, renamed, not answering) costs only that sweep: the
    sweeper logs it, sweeps again at the next interval, and still stops when asked."""
    missing = isolated.settings.database_url.rsplit("/", 1)[0] + f"/provisioning_missing_{uuid.uuid4().hex[:8]}"
    settings = isolated.settings.model_copy(update={"database_url": missing, "sweep_interval_seconds": 0.1})
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="provisioning.operations.sweeper")
    sweeper = threading.Thread(target=run_sweeper, args=(settings, stop))
    sweeper.start()
    try:
        wait_for(
            lambda: sum(record.getMessage() == "the sweep failed; the next one will try again" for record in caplog.records) >= 3,
            timeout=30, what="three failed sweeps, one after the other",
        )  # fmt: skip
    finally:
        stop.set()
        sweeper.join(timeout=30)
    assert not sweeper.is_alive(), "the sweeper stops when asked, outage or not"
    said = [record.getMessage() for record in caplog.records if record.name == "provisioning.operations.sweeper"]
    assert said[-1] == "sweeper: stopped"
