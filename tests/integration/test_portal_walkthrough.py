"""The README's walk-through for a portal, step by step, against the deployed processes: gunicorn
(the Procfile's ``web``), a Celery worker and the sweeper, on PostgreSQL, RabbitMQ and the rate
limits on Redis. A portal signs a customer up, gets the owner a token, registers a webhook, asks
for the site, receives the signed ``job.completed``, and the owner reveals the admin password;
then billing suspends the site for an unpaid invoice and opens it again once it is paid.

Every request is plain HTTP, as a portal's would be; the webhook's signature is checked by the
receiver's verifier, written from the Standard Webhooks text (tests.webhook_receiver).
"""

from __future__ import annotations

import uuid

import pytest
import requests

from provisioning.accounts import registry as accounts
from tests.helpers import wait_for
from tests.stack import REDIS_URL, SweeperProcess, WebProcess, WorkerProcess
from tests.webhook_receiver import WebhookReceiver

TIMEOUT = 10


@pytest.fixture
def platform(isolated, tmp_path):
    """The deployed processes on a stack of the test's own (webhooks to loopback allowed, rate
    limits on Redis), a webhook receiver, and the portal's platform token."""
    environment = {**isolated.environment, "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8", "RATE_LIMIT_STORAGE_URL": REDIS_URL}
    with isolated.session() as session:
        portal = accounts.create_user(session, f"portal-{uuid.uuid4().hex[:8]}@example.test", is_superuser=True)
        portal_token = accounts.issue_token(session, portal, name="portal")[1]
    receiver = WebhookReceiver()
    web = WebProcess(environment, tmp_path / "web.log", WEB_CONCURRENCY="1")
    worker = WorkerProcess(environment, isolated.dispatcher)
    sweeper = SweeperProcess(environment, tmp_path)
    try:
        yield web.url + "/api/v1", {"Authorization": f"Bearer {portal_token}"}, receiver
    finally:
        sweeper.stop()
        worker.stop()
        web.stop()
        receiver.close()


def call(method: str, path: str, headers: dict, expected: int, **body) -> dict:
    """The answer's ``data``, or the whole error, once its status is the one expected."""
    response = requests.request(method, path, headers=headers, json=body or None, timeout=TIMEOUT)
    assert response.status_code == expected, f"{method} {path}: {response.status_code} {response.text}"
    return response.json()["data"] if response.ok else response.json()


def test_a_portal_signs_a_customer_up_and_billing_suspends_and_reopens_the_site(platform):
    api, portal, receiver = platform
    slug = f"acme-{uuid.uuid4().hex[:6]}"

    # 1. The tenant and its owner; the owner's token, for that tenant alone.
    call("POST", f"{api}/tenants", portal, 201, slug=slug, name="Acme Ltd")
    owner = call("POST", f"{api}/tenants/{slug}/members", portal, 201, email=f"owner@{slug}.test", role="owner")
    issued = call("POST", f"{api}/tenants/{slug}/tokens", portal, 201, user_id=owner["user_id"], name="acme portal session")
    assert set(issued["scopes"]) == {"read", "write"} and issued["expires_at"]
    owner_auth = {"Authorization": f"Bearer {issued['token']}"}

    # 2. A webhook for the tenant's jobs; its secret is shown this once.
    endpoint = call("POST", f"{api}/webhooks", owner_auth, 201, url=receiver.url, event_types=["job.completed", "job.failed"])
    secret = endpoint["secret"]
    assert "secret" not in call("GET", f"{api}/webhooks/{endpoint['id']}", owner_auth, 200)

    # 3. The site, asked for by the owner's token; the signed job.completed says it is ready.
    once = {**owner_auth, "Idempotency-Key": f"signup-{slug}"}
    job = call("POST", f"{api}/provisioning/jobs", once, 201, job_type="create_site")
    [completed] = wait_for(lambda: receiver.received("job.completed"), timeout=90, what="the signed job.completed")
    assert completed.signed_by(secret)
    assert completed.event["data"]["job_id"] == job["id"] and completed.event["data"]["tenant_slug"] == slug
    assert call("GET", f"{api}/tenants/current", owner_auth, 200)["status"] == "active"

    # 4. The owner reveals the site's admin password, once.
    assert call("POST", f"{api}/tenants/current/admin-password", owner_auth, 200)["password"]
    call("POST", f"{api}/tenants/current/admin-password", owner_auth, 410)

    # 5. Billing suspends the site (the portal's platform token, naming the tenant); the owner may
    # neither lift it nor ask for anything but a backup, and is told so.
    billing = {**portal, "X-Tenant-ID": slug}
    suspend = call("POST", f"{api}/provisioning/jobs", billing, 201, job_type="suspend_site")
    wait_for(lambda: len(receiver.received("job.completed")) == 2, timeout=60, what="the suspension's job.completed")
    assert receiver.received("job.completed")[1].event["data"]["job_id"] == suspend["id"]
    assert call("GET", f"{api}/tenants/{slug}", portal, 200)["status"] == "suspended"
    call("POST", f"{api}/provisioning/jobs", owner_auth, 403, job_type="unsuspend_site")
    refused = call("POST", f"{api}/provisioning/jobs", owner_auth, 409, job_type="restore_drill")
    assert "the tenant is suspended" in refused["message"]

    # 6. Paid: billing opens it again.
    call("POST", f"{api}/provisioning/jobs", billing, 201, job_type="unsuspend_site")
    wait_for(lambda: len(receiver.received("job.completed")) == 3, timeout=60, what="the unsuspension's job.completed")
    assert call("GET", f"{api}/tenants/{slug}", portal, 200)["status"] == "active"
    assert all(request.signed_by(secret) for request in receiver.received())
