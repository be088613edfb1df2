"""The site's admin password: the owner reads it once, nobody else ever, and no race reads it twice."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from api import create_app
from provisioning.accounts import registry as accounts
from provisioning.cli import main
from provisioning.enums import Role, TenantStatus
from provisioning.models import Tenant
from provisioning.sites import credentials
from provisioning.sites.credentials import SiteCredentials
from tests.helpers import StrictClient, assert_error

REVEAL = "/api/v1/tenants/current/admin-password"
PASSWORD = "Qx7vLm2RtY9pWz4KdN8sHc3J"


@pytest.fixture
def client(app):
    app.test_client_class = StrictClient
    return app.test_client()


@pytest.fixture
def site(tenant_factory, session, settings):
    """An active tenant whose create_site stored PASSWORD, encrypted with the run's key."""
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    store_password(session, tenant, SiteCredentials(settings.site_credentials_key).encrypt(PASSWORD))
    return tenant


def store_password(session, tenant, encrypted: str) -> None:
    session.execute(update(Tenant).where(Tenant.id == tenant.id).values(admin_password_encrypted=encrypted))
    session.commit()


def revealed_at(session, tenant) -> datetime | None:
    revealed = session.scalar(select(Tenant.admin_password_revealed_at).where(Tenant.id == tenant.id))
    session.commit()  # so the next look sees what other sessions committed since
    return revealed


def client_with_key(settings, key: str | None):
    """A plain client (a 503 is the answer expected here) of an app with another key, or none."""
    return create_app(settings.model_copy(update={"site_credentials_key": key})).test_client()


def test_the_owner_reads_the_password_once_and_then_learns_when_it_was_read(client, site, session):
    first = client.post(REVEAL, headers=site.headers(Role.OWNER))
    assert first.status_code == 200, first.json
    assert first.headers["Cache-Control"] == "no-store"
    data = first.json["data"]
    assert (data["site_user"], data["password"]) == ("Administrator", PASSWORD)
    assert datetime.fromisoformat(data["revealed_at"]) == revealed_at(session, site)

    again = assert_error(client.post(REVEAL, headers=site.headers(Role.OWNER)), 410)
    assert data["revealed_at"][:19] in again["message"], again["message"]
    assert "not stored readable anywhere else" in again["message"]
    assert PASSWORD not in again["message"]


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER])
def test_an_admin_or_member_may_not_read_the_password_and_it_stays_unrevealed(client, site, session, role):
    body = assert_error(client.post(REVEAL, headers=site.headers(role)), 403)
    assert "owner" in body["message"]
    assert revealed_at(session, site) is None
    assert client.post(REVEAL, headers=site.headers(Role.OWNER)).json["data"]["password"] == PASSWORD


def test_a_platform_operator_may_not_read_the_customers_password(client, site, session):
    operator = accounts.create_user(session, f"operator-{site.tenant.slug}@example.test", is_superuser=True)
    token = accounts.issue_token(session, operator)[1]
    headers = {"Authorization": f"Bearer {token}", "X-Tenant-ID": site.tenant.slug}
    assert client.get("/api/v1/tenants/current", headers=headers).status_code == 200
    assert_error(client.post(REVEAL, headers=headers), 403)
    assert revealed_at(session, site) is None


def test_reading_needs_a_token(client, site, session):
    assert_error(client.post(REVEAL), 401)
    assert revealed_at(session, site) is None


def test_a_site_without_a_password_yet_is_a_conflict_that_says_so(client, tenant_factory):
    tenant = tenant_factory.create()
    body = assert_error(client.post(REVEAL, headers=tenant.headers()), 409)
    assert "no admin password yet" in body["message"] and "create_site" in body["message"]


@pytest.mark.parametrize("key", [None, credentials.new_key()], ids=["no-key", "another-key"])
def test_without_the_right_key_the_answer_is_503_and_the_password_stays_unrevealed(client, settings, site, session, key):
    body = assert_error(client_with_key(settings, key).post(REVEAL, headers=site.headers()), 503)
    assert "SITE_CREDENTIALS_KEY" in body["message"] and "stays unrevealed" in body["message"]
    assert revealed_at(session, site) is None
    assert client.post(REVEAL, headers=site.headers()).json["data"]["password"] == PASSWORD


def test_ten_concurrent_reveals_give_the_password_exactly_once(app, site, session):
    start = threading.Barrier(10)

    def reveal(_):
        client = app.test_client()
        start.wait(timeout=30)
        response = client.post(REVEAL, headers=site.headers())
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(reveal, range(10)))

    assert sorted(status for status, _ in answers) == [200] + [410] * 9
    assert [body["data"]["password"] for status, body in answers if status == 200] == [PASSWORD]
    assert revealed_at(session, site) is not None


def test_the_reveal_is_audited_without_the_password(client, site, environment):
    headers = {**site.headers(Role.OWNER), "User-Agent": "portal/2.1"}
    assert client.post(REVEAL, headers=headers).status_code == 200

    result = CliRunner().invoke(main, ["audit", "list", "--tenant", site.tenant.slug], env=environment)
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    revealed = [line for line in lines if line[2] == "site.admin_password_revealed"]
    assert len(revealed) == 1, result.output
    assert (revealed[0][1], revealed[0][4], revealed[0][5]) == (f"user {site.users[Role.OWNER].id}", "127.0.0.1", "portal/2.1")


def test_a_refused_reveal_is_not_audited(client, site, environment):
    assert client.post(REVEAL, headers=site.headers(Role.ADMIN)).status_code == 403
    result = CliRunner().invoke(main, ["audit", "list", "--tenant", site.tenant.slug], env=environment)
    assert "site.admin_password_revealed" not in result.output
