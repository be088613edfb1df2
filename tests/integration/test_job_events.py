"""Job events: every transition and step in order, with its actor, and status changes on the exchange."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from kombu import Connection, Queue
from sqlalchemy import select

from api import create_app
from provisioning.drivers.simulated import SimulatedDriver
from provisioning.enums import JobStatus, JobType, Role, TenantStatus
from provisioning.events import EventPublisher, events_exchange, publisher_for
from provisioning.models import ProvisioningJob
from provisioning.runner import JobRunner
from provisioning.service import ProvisioningService
from tests.helpers import StrictClient, wait_for

JOBS = "/api/v1/provisioning/jobs"
CREATE_STEPS = ["check_preconditions", "create_site", "install_apps", "configure_site", "verify_site"]


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
    job = ProvisioningService(session, dispatch=lambda _id: None).request_job(
        tenant.id, JobType.CREATE_SITE, tenant.users[Role.OWNER].id
    )
    run(settings, sessions, job.id)

    story = events(client, tenant, job.id)
    steps = [kind for step in CREATE_STEPS for kind in (("step_started", step), ("step_completed", step))]
    assert [(e["kind"], e["detail"]) for e in story] == [
        ("created", ""),
        ("dispatched", ""),
        ("claimed", ""),
        *steps,
        ("completed", ""),
    ]
    assert story[0]["actor"] == f"user {tenant.users[Role.OWNER].id}"
    assert {e["actor"] for e in story[2:]} == {"worker w@test pid 1"}
    assert [e["id"] for e in story] == sorted(e["id"] for e in story)


def test_a_failed_job_ends_with_the_failed_step_and_the_error(client, session, sessions, tenant_factory, settings):
    tenant = tenant_factory.create()
    job = ProvisioningService(session).request_job(tenant.id, JobType.CREATE_SITE)
    run(settings, sessions, job.id, fail_step="install_apps")

    story = events(client, tenant, job.id)
    assert [e["kind"] for e in story[-3:]] == ["step_started", "step_failed", "failed"]
    assert story[-2]["detail"].startswith("install_apps: step install_apps failed")
    assert "install_apps" in story[-1]["detail"]
    assert story[0]["actor"] == "operator"


def test_a_cancelled_job_says_who_cancelled_it(client, session, tenant_factory):
    tenant = tenant_factory.create()
    job = ProvisioningService(session).request_job(tenant.id, JobType.CREATE_SITE)
    assert client.post(f"{JOBS}/{job.id}/cancel", headers=tenant.headers(Role.ADMIN)).status_code == 200

    story = events(client, tenant, job.id)
    assert [e["kind"] for e in story] == ["created", "cancelled"]
    assert story[-1]["actor"] == f"user {tenant.users[Role.ADMIN].id}"


def test_a_retry_is_linked_both_ways(client, session, sessions, tenant_factory, settings):
    tenant = tenant_factory.create()
    first = ProvisioningService(session).request_job(tenant.id, JobType.CREATE_SITE)
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


def test_a_consumer_bound_to_the_exchange_hears_each_status_change(
    settings, worker, dispatcher, session, sessions, tenant_factory
):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    with Connection(settings.broker_url) as connection:
        listener = Queue(
            f"billing-{uuid.uuid4().hex[:6]}", exchange=events_exchange(settings), routing_key="job.*", exclusive=True
        )
        simple = connection.SimpleQueue(listener)
        app = create_app(settings)
        app.test_client().post(JOBS, json={"job_type": "backup_site"}, headers=tenant.headers(Role.OWNER))
        job_id = str(session.scalar(select(ProvisioningJob.id).where(ProvisioningJob.tenant_id == tenant.id)))

        heard = []

        def completed_heard():
            try:
                message = simple.get(timeout=0.5)
            except simple.Empty:
                return False
            message.ack()
            if message.payload["job_id"] == job_id:
                heard.append((message.delivery_info["routing_key"], message.payload["event"]))
            return heard and heard[-1][0] == "job.completed"

        wait_for(completed_heard, timeout=30, interval=0, what="the job.completed event")
        simple.close()
    assert heard == [("job.pending", "created"), ("job.running", "claimed"), ("job.completed", "completed")]


def test_an_event_that_cannot_be_published_is_counted_and_never_fails_the_job(settings, session, tenant_factory):
    closed = replace(settings, broker_url="amqp://guest:guest@127.0.0.1:1//")
    publisher = publisher_for(closed)
    tenant = tenant_factory.create()
    job = ProvisioningService(session, announce=publisher.announce).request_job(tenant.id, JobType.CREATE_SITE)

    assert publisher.flush(timeout=30)
    assert publisher.lost >= 1
    assert session.get(ProvisioningJob, job.id).status == JobStatus.PENDING


def test_an_event_after_its_connection_died_goes_out_on_a_new_one(settings, monkeypatch):
    publisher = EventPublisher(settings)  # a thread and connection of the test's own
    producers = []
    connect = publisher._connect
    monkeypatch.setattr(publisher, "_connect", lambda: producers.append(connect()) or producers[-1])
    with Connection(settings.broker_url) as connection:
        listener = Queue(f"audit-{uuid.uuid4().hex[:6]}", exchange=events_exchange(settings), routing_key="job.*", exclusive=True)
        heard = connection.SimpleQueue(listener)
        publisher.announce("job.pending", {"job_id": "first"})
        assert publisher.flush(timeout=30)
        producers[0].connection.connection.sock.close()  # as a broker restart leaves it: dead under the publisher

        publisher.announce("job.pending", {"job_id": "second"})
        assert publisher.flush(timeout=30)

        received = [heard.get(timeout=10).payload["job_id"] for _ in range(2)]
        heard.close()
    assert (received, publisher.lost, len(producers)) == (["first", "second"], 0, 2)
