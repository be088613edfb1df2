"""The sender under adverse receivers: an answer that comes after the delivery was taken over, an
answer trickled past the deadline, and an endpoint that hangs while others wait. The fixtures are
those of ``test_webhooks`` (an isolated database, loopback allowed, a receiver on loopback)."""

from __future__ import annotations

import threading
import time

from provisioning.enums import TenantStatus
from provisioning.webhooks.fanout import fan_out
from provisioning.webhooks.sender import LATE, WebhookSender
from tests.helpers import wait_for
from tests.integration.test_webhooks import WEBHOOKS, Loopback, loopback, receiver, register  # noqa: F401 (fixtures)
from tests.webhook_receiver import WebhookReceiver

# Statuses a tenant goes through, each change a tenant.status_changed event.
CHANGES = [TenantStatus.PROVISIONING, TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.ACTIVE, TenantStatus.SUSPENDED]


def fanned_out(stack: Loopback) -> int:
    """Fan the waiting events out into deliveries now (no round runs); how many events."""
    with stack.stack.session() as session:
        count = fan_out(session.connection())
        session.commit()
    return count


def test_an_answer_after_a_redelivery_by_hand_does_not_overwrite_the_newer_outcome(loopback, receiver):  # noqa: F811
    tenant = loopback.tenant()
    endpoint_id, _ = register(loopback.client, tenant.headers(), receiver.url, ["tenant.status_changed"])
    receiver.status = 500
    receiver.hold()  # the first attempt waits for its answer, a 500, until released
    loopback.set_status(tenant, TenantStatus.ACTIVE)
    first = threading.Thread(target=loopback.runner.run_once, name="first-attempt")
    first.start()
    newer = WebhookReceiver()
    second = WebhookSender(loopback.settings, loopback.stack.sessions)  # another sweeper's
    try:
        wait_for(receiver.held.is_set, timeout=30, what="the first post")
        [held] = receiver.received()
        # Redelivered by hand mid-post, to where the endpoint points now; the other sender sends it, answered 200.
        redelivered = loopback.client.post(f"{WEBHOOKS}/{endpoint_id}/deliveries/{held.id}/redeliver", headers=tenant.headers())
        assert redelivered.status_code == 202, redelivered.get_data(as_text=True)
        loopback.change_endpoint(endpoint_id, url=newer.url)
        assert second.send_due() == 1
        assert loopback.delivery(tenant.headers(), endpoint_id, held.id)["status"] == "delivered"
    finally:
        receiver.release()  # the first attempt's 500 arrives, late
        wait_for(lambda: not first.is_alive(), timeout=30, what="the first attempt to end")
        second.close()
        newer.close()
    assert [request.id for request in newer.received()] == [held.id]
    delivery = loopback.delivery(tenant.headers(), endpoint_id, held.id)
    assert delivery["status"] == "delivered" and delivery["last_status_code"] == 200 and delivery["last_error"] is None
    assert delivery["attempt_count"] == 1 and delivery["next_attempt_at"] is None
    # The late answer is in the log as what happened, marked late, and counted against nothing.
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [200, 500]
    assert delivery["attempts"][1]["error"] == f"answered HTTP 500; {LATE}"
    endpoint = loopback.client.get(f"{WEBHOOKS}/{endpoint_id}", headers=tenant.headers()).get_json()["data"]
    assert endpoint["consecutive_failures"] == 0 and endpoint["enabled"] is True


def test_a_receiver_that_trickles_its_answer_is_cut_at_the_deadline_and_the_attempt_failed(loopback):  # noqa: F811
    settings = loopback.settings.model_copy(update={"webhook_timeout_seconds": 1.0})
    trickling = WebhookReceiver(trickle=0.2)  # each byte well within a read's timeout; the whole answer in 8 s
    sender = WebhookSender(settings, loopback.stack.sessions)
    tenant = loopback.tenant()
    try:
        endpoint_id, _ = register(loopback.client, tenant.headers(), trickling.url, ["tenant.status_changed"])
        loopback.set_status(tenant, TenantStatus.ACTIVE)
        assert fanned_out(loopback) == 1
        started = time.monotonic()
        assert sender.send_due() == 1
        took = time.monotonic() - started
    finally:
        sender.close()
        trickling.close()
    [delivery] = loopback.deliveries(tenant.headers(), endpoint_id)
    assert delivery["status"] == "pending" and delivery["attempt_count"] == 1 and delivery["last_status_code"] is None
    assert "no whole answer within" in delivery["last_error"] and "cut" in delivery["last_error"]
    [attempt] = loopback.delivery(tenant.headers(), endpoint_id, delivery["id"])["attempts"]
    assert 900 <= attempt["duration_ms"] < 3000 and took < 4  # the answer would have taken 8 s


def test_an_endpoint_hanging_with_many_due_deliveries_holds_up_no_other_endpoints(loopback, receiver):  # noqa: F811
    settings = loopback.settings.model_copy(update={"webhook_timeout_seconds": 1.0})
    hanging = WebhookReceiver()
    hanging.hold()
    sender = WebhookSender(settings, loopback.stack.sessions)
    busy, quiet = loopback.tenant(), loopback.tenant()
    try:
        register(loopback.client, busy.headers(), hanging.url, ["tenant.status_changed"])
        healthy_id, _ = register(loopback.client, quiet.headers(), receiver.url, ["tenant.status_changed"])
        for status in CHANGES:
            loopback.set_status(busy, status)
        assert fanned_out(loopback) == len(CHANGES)
        loopback.set_status(quiet, TenantStatus.ACTIVE)
        assert fanned_out(loopback) == 1  # due after all of the hanging endpoint's
        assert sender.send_due() == 2  # one round: one delivery of each endpoint
    finally:
        hanging.release()
        sender.close()
        hanging.close()
    assert len(hanging.received()) == 1 and len(receiver.received()) == 1
    assert loopback.deliveries(quiet.headers(), healthy_id)[0]["status"] == "delivered"


def test_a_round_takes_the_deliveries_of_healthy_endpoints_before_those_of_failing_ones(loopback, receiver):  # noqa: F811
    failing, healthy = loopback.tenant(), loopback.tenant()
    failing_id, _ = register(loopback.client, failing.headers(), receiver.url, ["tenant.status_changed"])
    healthy_id, _ = register(loopback.client, healthy.headers(), receiver.url, ["tenant.status_changed"])
    loopback.change_endpoint(failing_id, consecutive_failures=3)
    loopback.set_status(failing, TenantStatus.ACTIVE)
    assert fanned_out(loopback) == 1
    loopback.set_status(healthy, TenantStatus.ACTIVE)
    assert fanned_out(loopback) == 1
    [waiting] = loopback.deliveries(healthy.headers(), healthy_id)
    sender = WebhookSender(loopback.settings, loopback.stack.sessions, threads=1)
    try:
        [claimed] = sender.claim(1)
    finally:
        sender.close()
    assert claimed.id == waiting["id"]  # although the failing endpoint's is the older
