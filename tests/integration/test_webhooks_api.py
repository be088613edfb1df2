"""The webhooks' API rules, on the run's shared database (no webhook is sent in these): targets
refused, roles, and other tenants' endpoints."""

from __future__ import annotations

import ipaddress

import pytest
from sqlalchemy import select

from api import create_app
from provisioning.accounts import audit
from provisioning.enums import Role
from provisioning.webhooks.models import WebhookEndpoint
from tests.factories import operator_headers
from tests.helpers import assert_error
from tests.integration.test_webhooks import PLATFORM_WEBHOOKS, WEBHOOKS, register


@pytest.fixture
def loopback_app(settings):
    app = create_app(settings.model_copy(update={"webhook_allowed_networks": (ipaddress.ip_network("127.0.0.0/8"),)}))
    app.config["TESTING"] = True
    return app


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks", "http://localhost/hooks", "http://[::1]/hooks", "http://10.1.2.3/hooks",
        "http://192.168.0.10/hooks", "http://169.254.169.254/latest/meta-data", "http://[::ffff:127.0.0.1]/hooks",
        "http://0.0.0.0/hooks", "http://224.0.0.1/hooks", "http://127.1/hooks", "http://2130706433/hooks",
        "http://localhost./hooks", "http://[2002:7f00:1::]/hooks",
    ],
)  # fmt: skip
def test_a_target_on_loopback_or_a_private_network_is_refused(client, tenant_factory, url):
    tenant = tenant_factory.create()
    response = client.post(WEBHOOKS, json={"url": url, "event_types": ["job.completed"]}, headers=tenant.headers())
    body = assert_error(response, 422)
    assert "url" in body["errors"]["json"], body


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "https://user:secret@hooks.example.com/x", "not a url"])
def test_a_url_that_is_not_http_is_refused(client, tenant_factory, url):
    tenant = tenant_factory.create()
    response = client.post(WEBHOOKS, json={"url": url, "event_types": ["job.completed"]}, headers=tenant.headers())
    assert "url" in assert_error(response, 422)["errors"]["json"]


def test_loopback_is_allowed_when_the_setting_allows_it(loopback_app, tenant_factory):
    tenant = tenant_factory.create()
    client = loopback_app.test_client()
    endpoint_id, _ = register(client, tenant.headers(), "http://127.0.0.1:8080/hooks", ["job.completed"])
    deleted = client.delete(f"{WEBHOOKS}/{endpoint_id}", headers=tenant.headers())
    assert deleted.status_code == 200 and deleted.get_json()["data"]["id"] == endpoint_id
    assert_error(client.get(f"{WEBHOOKS}/{endpoint_id}", headers=tenant.headers()), 404)


def test_members_read_the_endpoints_but_only_owners_and_admins_change_them(loopback_app, tenant_factory):
    tenant = tenant_factory.create()
    client = loopback_app.test_client()
    endpoint_id, _ = register(client, tenant.headers(Role.ADMIN), "http://127.0.0.1:8080/hooks", ["job.completed"])
    member = tenant.headers(Role.MEMBER)
    body = {"url": "http://127.0.0.1:8080/other", "event_types": ["job.failed"]}
    assert_error(client.post(WEBHOOKS, json=body, headers=member), 403)
    assert_error(client.patch(f"{WEBHOOKS}/{endpoint_id}", json={"enabled": False}, headers=member), 403)
    assert_error(client.post(f"{WEBHOOKS}/{endpoint_id}/rotate-secret", json={}, headers=member), 403)
    assert_error(client.delete(f"{WEBHOOKS}/{endpoint_id}", headers=member), 403)
    listed = client.get(WEBHOOKS, headers=member).get_json()
    assert [endpoint["id"] for endpoint in listed["data"]] == [endpoint_id] and listed["meta"]["total"] == 1
    assert "secret" not in listed["data"][0]
    # Platform endpoints are the operators' alone.
    assert_error(client.get(PLATFORM_WEBHOOKS, headers=tenant.headers()), 403)


def test_another_tenants_endpoint_is_not_found(loopback_app, tenant_factory, session):
    owner, other = tenant_factory.create(), tenant_factory.create()
    client = loopback_app.test_client()
    endpoint_id, _ = register(client, owner.headers(), "http://127.0.0.1:8080/hooks", ["job.completed"])
    for method, path in (
        ("get", ""), ("patch", ""), ("delete", ""), ("post", "/rotate-secret"), ("get", "/deliveries"),
        ("get", "/deliveries/msg_0123456789abcdef0123456789abcdef"),
    ):  # fmt: skip
        body = {} if method != "get" else None
        assert_error(getattr(client, method)(f"{WEBHOOKS}/{endpoint_id}{path}", json=body, headers=other.headers()), 404)
    # Nor is it the platform's.
    assert_error(client.get(f"{PLATFORM_WEBHOOKS}/{endpoint_id}", headers=operator_headers(session)), 404)
    assert session.scalar(select(WebhookEndpoint.tenant_id).where(WebhookEndpoint.id == endpoint_id)) == owner.id


def test_the_audit_trail_keeps_a_webhook_url_s_origin_never_its_path_or_query(client, tenant_factory, session):
    """A receiver may take a secret in its URL's path or query: the trail says where, not that."""
    tenant = tenant_factory.create()
    secret_url = "https://hooks.example.com/erpmax/s3cr3t-path?key=s3cr3t-query"
    endpoint_id, _ = register(client, tenant.headers(), secret_url, ["job.completed"])
    moved = {"url": "https://hooks.example.com/other/s3cr3t-too"}
    assert client.patch(f"{WEBHOOKS}/{endpoint_id}", json=moved, headers=tenant.headers()).status_code == 200
    assert client.delete(f"{WEBHOOKS}/{endpoint_id}", headers=tenant.headers()).status_code == 200
    details = [entry.detail for entry in audit.entries(session, tenant_id=tenant.id) if entry.action.startswith("webhook.")]
    assert len(details) == 3 and all("https://hooks.example.com" in detail for detail in details)
    assert not any("s3cr3t" in detail for detail in details)
