"""Webhooks end to end: endpoints registered through the API, events fanned out from the outboxes
and POSTed, signed, to a receiver the test runs on loopback, checked by a verifier written from the
Standard Webhooks convention (tests.webhook_receiver), never by our signing code.

The tests that need the sweeper's own process run it (the Procfile's line); the others run its
webhooks round (``WebhookRunner.run_once``) in the test, round after round until what they wait for
arrives. Each runs on a database of its own (``isolated``), so no other test's events reach it.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import signal
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import select, update

from api import create_app
from provisioning.accounts import audit
from provisioning.cli import main
from provisioning.enums import TenantStatus
from provisioning.jobs.runner import JobRunner
from provisioning.models import Tenant
from provisioning.operations.sweeper import sweep
from provisioning.platform.db import utcnow
from provisioning.platform.settings import Settings
from provisioning.sites.drivers.simulated import SimulatedDriver
from provisioning.webhooks.fanout import fan_out
from provisioning.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from provisioning.webhooks.retention import KEEP_DELIVERIES
from provisioning.webhooks.runner import WebhookRunner
from provisioning.webhooks.sender import DISABLE_AFTER, DISABLE_AFTER_FAILURES, RETRY_DELAYS
from tests.factories import TenantFactory, TenantWithUsers, operator_headers
from tests.helpers import assert_error, wait_for
from tests.integration.test_metrics import scrape, value
from tests.stack import SweeperProcess, WorkerProcess
from tests.webhook_receiver import WebhookReceiver

LOOPBACK_ALLOWED = {"WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}
WEBHOOKS = "/api/v1/webhooks"
PLATFORM_WEBHOOKS = "/api/v1/platform/webhooks"


@dataclass
class Loopback:
    """An isolated stack whose settings allow webhooks to loopback, its API client, and its webhooks round."""

    settings: Settings
    environment: dict[str, str]
    client: FlaskClient
    stack: object
    runner: WebhookRunner

    def tenant(self, status: TenantStatus = TenantStatus.PENDING) -> TenantWithUsers:
        with self.stack.session() as session:
            return TenantFactory(session).create(status=status)

    def set_status(self, tenant: TenantWithUsers, status: TenantStatus) -> None:
        with self.stack.session() as session:
            TenantFactory(session).set_status(session.get(Tenant, tenant.id), status)

    def deliver_until(self, probe, timeout: float = 30.0, what: str = "deliveries"):
        """Run webhooks rounds until ``probe`` answers something truthy; that answer."""

        def round_then_probe():
            self.runner.run_once()
            return probe()

        return wait_for(round_then_probe, timeout=timeout, interval=0.1, what=what)

    def delivery(self, headers: dict, endpoint_id: str, delivery_id: str, prefix: str = WEBHOOKS) -> dict:
        response = self.client.get(f"{prefix}/{endpoint_id}/deliveries/{delivery_id}", headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["data"]

    def deliveries(self, headers: dict, endpoint_id: str, prefix: str = WEBHOOKS) -> list[dict]:
        response = self.client.get(f"{prefix}/{endpoint_id}/deliveries?size=100", headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["data"]

    def change_endpoint(self, endpoint_id: str, **values) -> None:
        with self.stack.session() as session:
            session.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(**values))
            session.commit()


@pytest.fixture
def loopback(isolated):
    environment = {**isolated.environment, **LOOPBACK_ALLOWED}
    settings = isolated.settings.model_copy(update={"webhook_allowed_networks": (ipaddress.ip_network("127.0.0.0/8"),)})
    app = create_app(settings)
    app.config["TESTING"] = True
    runner = WebhookRunner(settings, isolated.sessions)
    yield Loopback(settings, environment, app.test_client(), isolated, runner)
    runner.stop()


@pytest.fixture
def receiver():
    made = WebhookReceiver()
    yield made
    made.close()


def register(client: FlaskClient, headers: dict, url: str, event_types: list[str], prefix: str = WEBHOOKS) -> tuple[str, str]:
    """Register an endpoint through the API; its id and secret."""
    response = client.post(prefix, json={"url": url, "event_types": event_types}, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    data = response.get_json()["data"]
    assert data["secret"].startswith("whsec_") and response.headers["Location"].endswith(data["id"])
    return data["id"], data["secret"]


def request_job(client: FlaskClient, tenant: TenantWithUsers, job_type: str) -> str:
    response = client.post("/api/v1/provisioning/jobs", json={"job_type": job_type}, headers=tenant.headers())
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["data"]["id"]


def a_secret_of_our_own() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def test_a_site_created_through_the_api_is_announced_to_the_tenants_endpoint_signed(loopback, receiver, tmp_path):
    tenant = loopback.tenant()
    wanted = ["job.created", "job.started", "job.completed", "tenant.status_changed", "backup.completed"]
    endpoint_id, secret = register(loopback.client, tenant.headers(), receiver.url, wanted)
    worker = WorkerProcess(loopback.environment, loopback.stack.dispatcher)
    sweeper = SweeperProcess(loopback.environment, tmp_path)
    try:
        job_id = request_job(loopback.client, tenant, "create_site")
        wait_for(
            lambda: receiver.received("job.completed") and len(receiver.received("tenant.status_changed")) >= 2,
            timeout=60,
            what="job.completed and the tenant's two status changes",
        )
        backup_job_id = request_job(loopback.client, tenant, "backup_site")
        wait_for(
            lambda: receiver.received("job.completed")[1:] and receiver.received("backup.completed"),
            timeout=60,
            what="the backup's job.completed and backup.completed",
        )
    finally:
        sweeper.stop()
        worker.stop()

    received = receiver.received()
    # Sent concurrently, in no promised order; each once (nothing failed, so nothing was sent twice).
    job_types = sorted(request.type for request in received if request.type.startswith("job."))
    assert job_types == ["job.completed"] * 2 + ["job.created"] * 2 + ["job.started"] * 2
    [backup] = loopback.client.get("/api/v1/provisioning/backups", headers=tenant.headers()).get_json()["data"]
    [backed_up] = receiver.received("backup.completed")
    assert backed_up.event["data"]["job_id"] == backup_job_id
    assert backed_up.event["data"]["backup"]["id"] == backup["id"] and backed_up.event["data"]["backup"]["size"] == backup["size"]
    for request in received:
        assert request.signed_by(secret), request.headers
        assert not request.signed_by(a_secret_of_our_own())
        assert request.event.keys() == {"type", "timestamp", "data"}
    completed = next(r.event["data"] for r in receiver.received("job.completed") if r.event["data"]["job_id"] == job_id)
    assert completed == {
        "job_id": job_id, "job_type": "create_site", "status": "completed", "tenant_id": str(tenant.id),
        "tenant_slug": tenant.tenant.slug,
    }  # fmt: skip
    told = receiver.received("tenant.status_changed")
    changes = {(request.event["data"]["previous_status"], request.event["data"]["status"]) for request in told}
    assert changes == {("pending", "provisioning"), ("provisioning", "active")}
    # The delivery log shows each, delivered, under the webhook-id it was sent with.
    log = loopback.deliveries(tenant.headers(), endpoint_id)
    assert sorted(delivery["id"] for delivery in log) == sorted(request.id for request in received)
    assert {delivery["status"] for delivery in log} == {"delivered"}


def test_a_receiver_that_fails_then_recovers_gets_the_same_webhook_id_again(loopback, receiver, isolated):
    tenant = loopback.tenant()
    endpoint_id, secret = register(loopback.client, tenant.headers(), receiver.url, ["tenant.status_changed"])
    # A platform endpoint hears every tenant's events, on a receiver of the same test.
    operator = operator_headers(isolated.session())
    platform_id, platform_secret = register(loopback.client, operator, receiver.url, ["tenant.status_changed"], PLATFORM_WEBHOOKS)
    receiver.status = 500
    loopback.set_status(tenant, TenantStatus.ACTIVE)
    loopback.deliver_until(lambda: receiver.received()[1:], what="the first attempts, the tenant's and the platform's")
    delivery_id = next(request.id for request in receiver.received() if request.signed_by(secret))
    failed = loopback.delivery(tenant.headers(), endpoint_id, delivery_id)
    assert failed["status"] == "pending" and failed["last_status_code"] == 500 and failed["attempt_count"] == 1
    retry_at = utcnow() + RETRY_DELAYS[0]
    assert abs((datetime.fromisoformat(failed["next_attempt_at"]) - retry_at).total_seconds()) < 3

    receiver.status = 200
    loopback.deliver_until(
        lambda: loopback.delivery(tenant.headers(), endpoint_id, delivery_id)["status"] == "delivered",
        timeout=RETRY_DELAYS[0].total_seconds() + 30,
        what="the retry",
    )
    again = [request for request in receiver.received() if request.id == delivery_id]
    assert len(again) == 2 and all(request.signed_by(secret) for request in again)
    assert again[0].body == again[1].body  # frozen at fan-out
    detail = loopback.delivery(tenant.headers(), endpoint_id, delivery_id)
    assert [attempt["status_code"] for attempt in detail["attempts"]] == [500, 200]
    assert detail["attempts"][0]["error"] == "answered HTTP 500"
    # The platform's endpoint got the same event under a webhook-id of its own, signed with its secret.
    platform_log = loopback.deliveries(operator, platform_id, PLATFORM_WEBHOOKS)
    assert len(platform_log) == 1 and platform_log[0]["id"] != delivery_id
    assert platform_log[0]["payload"]["data"]["tenant_id"] == str(tenant.id)
    assert all(r.signed_by(platform_secret) for r in receiver.received() if r.id == platform_log[0]["id"])


def test_a_delivery_cut_short_by_a_killed_sweeper_is_sent_again_with_the_same_id(loopback, receiver, tmp_path):
    environment = {**loopback.environment, "WEBHOOK_TIMEOUT_SECONDS": "2"}
    tenant = loopback.tenant()
    endpoint_id, secret = register(loopback.client, tenant.headers(), receiver.url, ["tenant.status_changed"])
    receiver.hold()  # the first post waits for an answer while its sweeper is killed
    (tmp_path / "first").mkdir()
    sweeper = SweeperProcess(environment, tmp_path / "first")
    try:
        loopback.set_status(tenant, TenantStatus.ACTIVE)
        wait_for(receiver.held.is_set, timeout=30, what="the first post")
    finally:
        sweeper.group.stop(signal.SIGKILL, timeout=30)
    receiver.release()
    [cut_short] = loopback.deliveries(tenant.headers(), endpoint_id)
    assert cut_short["status"] == "pending" and cut_short["attempt_count"] == 0

    (tmp_path / "second").mkdir()
    sweeper = SweeperProcess(environment, tmp_path / "second")
    try:
        wait_for(
            lambda: loopback.delivery(tenant.headers(), endpoint_id, cut_short["id"])["status"] == "delivered",
            timeout=40,
            what="the restarted sweeper to send it again once its lease ended",
        )
    finally:
        sweeper.stop()
    assert [request.id for request in receiver.received()] == [cut_short["id"], cut_short["id"]]
    assert all(request.signed_by(secret) for request in receiver.received())


def test_a_rotated_secret_signs_beside_the_old_one_until_the_overlap_ends(loopback, receiver):
    tenant = loopback.tenant()
    endpoint_id, old = register(loopback.client, tenant.headers(), receiver.url, ["tenant.status_changed"])
    rotated = loopback.client.post(f"{WEBHOOKS}/{endpoint_id}/rotate-secret", json={}, headers=tenant.headers())
    assert rotated.status_code == 200, rotated.get_data(as_text=True)
    new = rotated.get_json()["data"]["secret"]
    assert new != old and rotated.get_json()["data"]["previous_secret_expires_at"]
    assert "secret" not in loopback.client.get(f"{WEBHOOKS}/{endpoint_id}", headers=tenant.headers()).get_json()["data"]

    loopback.set_status(tenant, TenantStatus.ACTIVE)
    [during] = loopback.deliver_until(receiver.received, what="the delivery during the overlap")
    assert during.signed_by(new) and during.signed_by(old)
    assert len(during.headers["webhook-signature"].split(" ")) == 2

    # A day later (the overlap's end, moved to now): redelivered by hand, only the new secret signs.
    loopback.change_endpoint(endpoint_id, previous_secret_expires_at=utcnow() - timedelta(seconds=1))
    redelivered = loopback.client.post(f"{WEBHOOKS}/{endpoint_id}/deliveries/{during.id}/redeliver", headers=tenant.headers())
    assert redelivered.status_code == 202, redelivered.get_data(as_text=True)
    assert redelivered.get_json()["data"]["status"] == "pending"
    after = loopback.deliver_until(lambda: receiver.received()[1:], what="the redelivery")[0]
    assert after.id == during.id and after.event == during.event
    assert after.signed_by(new) and not after.signed_by(old)
    assert len(loopback.delivery(tenant.headers(), endpoint_id, during.id)["attempts"]) == 2


def test_an_endpoint_failing_for_a_day_is_disabled_and_its_owner_told(loopback, receiver, isolated):
    tenant = loopback.tenant()
    failing = WebhookReceiver(status=503)
    try:
        failing_id, _ = register(loopback.client, tenant.headers(), failing.url, ["tenant.status_changed"])
        told_id, told_secret = register(loopback.client, tenant.headers(), receiver.url, ["webhook.endpoint_disabled"])
        # A day of failed attempts, as the sender would have counted them, short of the last.
        since = utcnow() - DISABLE_AFTER - timedelta(minutes=1)
        loopback.change_endpoint(failing_id, failing_since=since, consecutive_failures=DISABLE_AFTER_FAILURES - 1)
        loopback.set_status(tenant, TenantStatus.ACTIVE)
        [told] = loopback.deliver_until(receiver.received, what="the owner to be told")
    finally:
        failing.close()
    assert told.signed_by(told_secret) and told.type == "webhook.endpoint_disabled"
    assert told.event["data"]["endpoint_id"] == failing_id and "503" in told.event["data"]["reason"]
    endpoint = loopback.client.get(f"{WEBHOOKS}/{failing_id}", headers=tenant.headers()).get_json()["data"]
    assert endpoint["enabled"] is False and endpoint["disabled_reason"] == told.event["data"]["reason"]
    assert f"{DISABLE_AFTER_FAILURES} failed attempts in a row" in endpoint["disabled_reason"]
    with isolated.session() as session:
        entries = audit.entries(session, tenant_id=tenant.id)
    assert any(e.action == "webhook.endpoint_disabled" and e.target == f"webhook {failing_id}" for e in entries)
    # Its pending delivery waits; a redelivery by hand is refused until it is enabled again.
    [waiting] = loopback.deliveries(tenant.headers(), failing_id)
    assert waiting["status"] == "pending"
    figures = scrape(loopback.client)
    assert value(figures, "erpmax_webhook_endpoints_disabled") == 1
    assert value(figures, "erpmax_webhook_deliveries", status="pending") == 1
    assert value(figures, "erpmax_webhook_deliveries", status="delivered") == 1
    assert value(figures, "erpmax_webhook_most_overdue_delivery_seconds") == 0  # the waiting one's endpoint is off
    refused = loopback.client.post(f"{WEBHOOKS}/{failing_id}/deliveries/{waiting['id']}/redeliver", headers=tenant.headers())
    assert_error(refused, 409)

    enabled = loopback.client.patch(f"{WEBHOOKS}/{failing_id}", json={"enabled": True}, headers=tenant.headers())
    assert enabled.status_code == 200, enabled.get_data(as_text=True)
    shown = enabled.get_json()["data"]
    assert shown["enabled"] is True and shown["disabled_reason"] is None and shown["consecutive_failures"] == 0
    assert loopback.deliveries(tenant.headers(), told_id)[0]["status"] == "delivered"


def test_a_backup_fanned_out_in_one_batch_with_its_creation_is_announced_once(loopback, receiver):
    tenant = loopback.tenant()
    register(loopback.client, tenant.headers(), receiver.url, ["job.created", "job.completed", "backup.completed"])
    worker = JobRunner.for_settings(loopback.settings, loopback.stack.sessions, SimulatedDriver(step_seconds=0), "w@test")
    for job_type in ("create_site", "backup_site"):  # both run before any fan-out: one batch holds all their events
        worker.run(uuid.UUID(request_job(loopback.client, tenant, job_type)))
    loopback.deliver_until(lambda: len(receiver.received()) >= 5, what="the two jobs' events")
    told = sorted(request.type for request in receiver.received())
    assert told == ["backup.completed", "job.completed", "job.completed", "job.created", "job.created"]


def test_the_doctor_fails_when_deliveries_are_due_and_no_sender_sends_them(loopback, receiver):
    tenant = loopback.tenant()
    register(loopback.client, tenant.headers(), receiver.url, ["tenant.status_changed"])
    loopback.set_status(tenant, TenantStatus.ACTIVE)
    with loopback.stack.session() as session:
        assert fan_out(session.connection()) == 1  # fanned out, never sent: no sweeper runs
        session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow() - timedelta(minutes=2)))
        session.commit()
    result = CliRunner().invoke(main, ["doctor"], env=loopback.environment)
    line = next(line for line in result.stdout.splitlines() if " webhooks:" in line)
    assert line.startswith("FAIL webhooks: 1 deliveries pending, 0 failed, 0 endpoint(s) disabled; one has been due for 1")
    assert "start the sweeper" in line and result.exit_code == 1
    assert receiver.received() == []


def test_the_sweep_forgets_finished_deliveries_after_their_keeping_and_keeps_pending_ones(loopback, receiver):
    tenant = loopback.tenant()
    register(loopback.client, tenant.headers(), receiver.url, ["tenant.status_changed"])
    for status in (TenantStatus.PROVISIONING, TenantStatus.ACTIVE):
        loopback.set_status(tenant, status)
    long_ago = utcnow() - KEEP_DELIVERIES - timedelta(minutes=1)
    with loopback.stack.session() as session:
        assert fan_out(session.connection()) == 2
        finished, waiting = session.scalars(select(WebhookDelivery.id).order_by(WebhookDelivery.event_key)).all()
        session.execute(update(WebhookDelivery).values(created_at=long_ago))
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == finished).values(status=DeliveryStatus.DELIVERED))
        session.commit()
    assert sweep(loopback.settings, loopback.stack.sessions, loopback.stack.dispatcher.send_job).forgotten_deliveries == 1
    with loopback.stack.session() as session:
        assert session.scalars(select(WebhookDelivery.id)).all() == [waiting]

