"""Tenants, users and members over HTTP: platform operators make and list them, a tenant's owner
manages its own members and tokens (never another tenant's), and every change is audited."""

from __future__ import annotations

import uuid

import pytest

from provisioning.accounts import audit
from provisioning.accounts import registry as accounts
from provisioning.enums import Role, Scope, TenantStatus
from provisioning.models import AuditEntry
from tests.factories import operator_headers
from tests.helpers import StrictClient, assert_error

pytestmark = pytest.mark.usefixtures("rolled_back")  # nothing here needs another connection to see its rows

TENANTS = "/api/v1/tenants"
USERS = "/api/v1/users"
JOBS = "/api/v1/provisioning/jobs"
PORTAL = {"User-Agent": "portal/3.0"}


@pytest.fixture
def client(app):
    app.test_client_class = StrictClient
    return app.test_client()


@pytest.fixture
def operator(session) -> dict[str, str]:
    return {**operator_headers(session), **PORTAL}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **PORTAL}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def audited(session, tenant_id: uuid.UUID | None = None) -> list[AuditEntry]:
    """The entries, oldest first."""
    return list(reversed(audit.entries(session, tenant_id=tenant_id, limit=1000)))


def test_the_portal_sets_up_a_tenant_whose_owner_then_manages_members_and_their_tokens(client, operator, session):
    slug, owner_email = unique("acme"), f"{unique('owner')}@example.test"

    created = client.post(TENANTS, json={"slug": slug, "name": "Acme Ltd"}, headers=operator)
    assert created.status_code == 201, created.json
    tenant = created.json["data"]
    assert (tenant["slug"], tenant["name"], tenant["status"]) == (slug, "Acme Ltd", "pending")
    assert created.headers["Location"].endswith(f"{TENANTS}/{slug}")
    owner = client.post(USERS, json={"email": owner_email}, headers=operator)
    assert owner.status_code == 201 and owner.json["data"]["is_superuser"] is False
    owner_id = owner.json["data"]["id"]
    membership = client.post(f"{TENANTS}/{slug}/members", json={"email": owner_email, "role": "owner"}, headers=operator)
    assert membership.status_code == 201 and membership.json["data"]["user_id"] == owner_id
    issued = client.post(f"{TENANTS}/{slug}/tokens", json={"user_id": owner_id, "name": "portal"}, headers=operator)
    assert issued.status_code == 201, issued.json
    assert issued.json["data"]["scopes"] == ["read", "write"] and issued.json["data"]["tenant_id"] == tenant["id"]
    owner_token = issued.json["data"]["token"]

    # The owner, with the token the portal got them, adds a member, promotes them, gives them a token.
    added = client.post(
        f"{TENANTS}/{slug}/members", json={"email": "Pat@Example.test", "role": "member"}, headers=bearer(owner_token)
    )
    assert added.status_code == 201, added.json
    assert (added.json["data"]["email"], added.json["data"]["role"]) == ("pat@example.test", "member")
    pat = added.json["data"]["user_id"]
    promoted = client.patch(f"{TENANTS}/{slug}/members/{pat}", json={"role": "admin"}, headers=bearer(owner_token))
    assert promoted.status_code == 200 and promoted.json["data"]["role"] == "admin"
    pats = client.post(
        f"{TENANTS}/{tenant['id']}/tokens",
        json={"user_id": pat, "scopes": ["read"], "expires_in_days": 7},
        headers=bearer(owner_token),
    )
    assert pats.status_code == 201, pats.json
    pat_token = pats.json["data"]["token"]
    assert client.get(JOBS, headers=bearer(pat_token)).status_code == 200
    members = client.get(f"{TENANTS}/{slug}/members", headers=bearer(owner_token)).json
    assert [(m["email"], m["role"]) for m in members["data"]] == [(owner_email, "owner"), ("pat@example.test", "admin")]
    assert members["meta"] == {"page": 1, "size": 20, "total": 2, "pages": 1}

    revoked = client.delete(f"{TENANTS}/{slug}/tokens/{pats.json['data']['id']}", headers=bearer(owner_token))
    assert revoked.status_code == 200 and revoked.json["data"]["revoked_at"] is not None
    assert "revoked" in assert_error(client.get(JOBS, headers=bearer(pat_token)), 401)["message"]
    removed = client.delete(f"{TENANTS}/{slug}/members/{pat}", headers=bearer(owner_token))
    assert removed.status_code == 200 and removed.json["data"]["role"] == "admin"

    entries = audited(session, uuid.UUID(tenant["id"]))
    assert [entry.action for entry in entries] == [
        "tenant.created", "membership.added", "token.created", "user.created", "membership.added", "membership.changed",
        "token.created", "token.revoked", "membership.removed",
    ]  # fmt: skip
    by_owner = [entry for entry in entries if entry.actor == f"user {owner_id}"]
    assert len(by_owner) == 6 and all((e.ip, e.user_agent) == ("127.0.0.1", "portal/3.0") for e in by_owner)
    assert next(e for e in entries if e.action == "membership.changed").detail == "member -> admin"


def test_tenants_are_listed_by_page_and_status_read_by_slug_or_id_and_renamed(client, operator, session, tenant_factory):
    active = [tenant_factory.create(status=TenantStatus.ACTIVE, roles=()) for _ in range(3)]
    listed = client.get(TENANTS, query_string={"status": "active", "size": 2}, headers=operator).json
    assert listed["meta"]["size"] == 2 and listed["meta"]["total"] >= 3
    assert all(tenant["status"] == "active" for tenant in listed["data"]) and len(listed["data"]) == 2
    second = client.get(TENANTS, query_string={"status": "active", "size": 2, "page": 2}, headers=operator).json
    assert not {t["id"] for t in second["data"]} & {t["id"] for t in listed["data"]}

    one = active[0].tenant
    assert client.get(f"{TENANTS}/{one.id}", headers=operator).json["data"]["slug"] == one.slug
    renamed = client.patch(f"{TENANTS}/{one.slug}", json={"name": "Renamed Ltd"}, headers=operator)
    assert renamed.status_code == 200 and renamed.json["data"]["name"] == "Renamed Ltd"
    assert audited(session, one.id)[-1].action == "tenant.updated"
    assert_error(client.get(f"{TENANTS}/no-such-tenant", headers=operator), 404)
    assert_error(client.patch(f"{TENANTS}/{one.slug}", json={"status": "deleted"}, headers=operator), 422)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"slug": "current", "name": "Shadow"}, "slug"),
        ({"slug": "Not A Slug", "name": "x"}, "slug"),
        ({"slug": "acme\n", "name": "x"}, "slug"),
        ({"slug": "fine", "name": " "}, "name"),
        ({"slug": "fine", "name": "two\nlines"}, "name"),
        ({"slug": "fine", "name": "n" * 201}, "name"),
        ({"slug": "fine", "name": "\u3000"}, "name"),
        ({"slug": "fine", "name": "Acme \ud800"}, "name"),  # a lone surrogate: no database can hold it
        ({"slug": "fine"}, "name"),
    ],
)
def test_a_tenant_that_cannot_be_is_a_422_naming_the_field(client, operator, body, field):
    assert field in assert_error(client.post(TENANTS, json=body, headers=operator), 422)["errors"]["json"]


def test_a_taken_slug_or_e_mail_is_a_409(client, operator, tenant_factory):
    made = tenant_factory.create(roles=(Role.OWNER,))
    assert_error(client.post(TENANTS, json={"slug": made.tenant.slug, "name": "Again"}, headers=operator), 409)
    assert_error(client.post(USERS, json={"email": made.users[Role.OWNER].email}, headers=operator), 409)


def test_users_are_made_listed_and_read_by_operators_only(client, operator, tenant_factory, session):
    email = f"{unique('ops')}@example.test"
    made = client.post(USERS, json={"email": email, "is_superuser": True}, headers=operator)
    assert made.status_code == 201 and made.json["data"]["is_superuser"] is True
    assert client.get(f"{USERS}/{made.json['data']['id']}", headers=operator).json["data"]["email"] == email
    listed = client.get(USERS, query_string={"size": 100}, headers=operator).json
    assert listed["meta"]["total"] >= 2
    assert_error(client.get(f"{USERS}/{uuid.uuid4()}", headers=operator), 404)
    assert_error(client.post(USERS, json={"email": "not an address"}, headers=operator), 422)
    assert_error(client.post(USERS, json={"email": email.replace("@", "@@")}, headers=operator), 422)
    assert_error(client.post(USERS, json={"email": "lone\udc00@example.test"}, headers=operator), 422)
    assert audited(session)[-1].action == "user.created"

    owner = tenant_factory.create(roles=(Role.OWNER,))
    one_tenant = f"{TENANTS}/{owner.tenant.slug}"
    platform_only = (("get", USERS), ("post", USERS), ("get", TENANTS), ("post", TENANTS), ("get", one_tenant))
    for method, path in platform_only:
        body = assert_error(getattr(client, method)(path, json={"email": "x@y.test"}, headers=owner.headers()), 403)
        assert "platform operators" in body["message"]


def test_a_tenant_is_never_left_without_an_owner(client, tenant_factory, session):
    tenant = tenant_factory.create(roles=(Role.OWNER, Role.ADMIN))
    members = f"{TENANTS}/{tenant.tenant.slug}/members"
    owner, admin = tenant.users[Role.OWNER].id, tenant.users[Role.ADMIN].id

    for refused in (client.delete(f"{members}/{owner}", headers=tenant.headers()),
                    client.patch(f"{members}/{owner}", json={"role": "admin"}, headers=tenant.headers())):  # fmt: skip
        assert "last owner" in assert_error(refused, 409)["message"]
    assert client.patch(f"{members}/{admin}", json={"role": "owner"}, headers=tenant.headers()).status_code == 200
    # Now there are two owners: one may step down, and the other is then the last.
    assert client.patch(f"{members}/{owner}", json={"role": "member"}, headers=tenant.headers()).status_code == 200
    second_owner = accounts.issue_token(session, tenant.users[Role.ADMIN], tenant=tenant.tenant)[1]
    assert_error(client.delete(f"{members}/{admin}", headers=bearer(second_owner)), 409)
    assert client.delete(f"{members}/{owner}", headers=bearer(second_owner)).status_code == 200


def test_an_owner_cannot_see_or_touch_another_tenants_members_or_tokens(client, tenant_factory):
    mine, theirs = tenant_factory.create(), tenant_factory.create()
    their_member = theirs.users[Role.MEMBER].id
    their_token = client.post(
        f"{TENANTS}/{theirs.tenant.slug}/tokens", json={"user_id": str(their_member)}, headers=theirs.headers()
    ).json["data"]["id"]
    for method, path in [
        ("get", f"{TENANTS}/{theirs.tenant.slug}/members"),
        ("post", f"{TENANTS}/{theirs.tenant.slug}/members"),
        ("patch", f"{TENANTS}/{theirs.tenant.id}/members/{their_member}"),
        ("delete", f"{TENANTS}/{theirs.tenant.slug}/members/{their_member}"),
        ("get", f"{TENANTS}/{theirs.tenant.slug}/tokens"),
        ("delete", f"{TENANTS}/{theirs.tenant.slug}/tokens/{their_token}"),
        ("get", f"{TENANTS}/no-such-tenant/members"),
    ]:
        assert_error(getattr(client, method)(path, json={"email": "x@y.test", "role": "owner"}, headers=mine.headers()), 404)
    # Through its own tenant's paths neither: another tenant's member or token is not found there.
    own = f"{TENANTS}/{mine.tenant.slug}"
    assert_error(client.delete(f"{own}/members/{their_member}", headers=mine.headers()), 404)
    assert_error(client.delete(f"{own}/tokens/{their_token}", headers=mine.headers()), 404)
    issued = client.post(f"{own}/tokens", json={"user_id": str(their_member)}, headers=mine.headers())
    assert "not a member" in assert_error(issued, 404)["message"] and theirs.users[Role.MEMBER].email not in issued.text
    assert client.get(JOBS, headers=theirs.headers(Role.MEMBER)).status_code == 200, "nothing of theirs changed"


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER])
def test_admins_and_members_may_not_manage_members_or_tokens(client, tenant_factory, role):
    tenant = tenant_factory.create()
    for method, path in (("get", "members"), ("post", "members"), ("get", "tokens"), ("post", "tokens")):
        refused = getattr(client, method)(f"{TENANTS}/{tenant.tenant.slug}/{path}", json={}, headers=tenant.headers(role))
        assert "owner" in assert_error(refused, 403)["message"]


def test_an_operator_manages_any_tenants_members_and_a_platformless_operator_token_cannot(
    client, operator, tenant_factory, session
):
    tenant = tenant_factory.create(roles=(Role.OWNER,))
    members = f"{TENANTS}/{tenant.tenant.slug}/members"
    assert client.get(members, headers=operator).json["meta"]["total"] == 1
    superuser = accounts.create_user(session, f"{unique('op')}@example.test", is_superuser=True)
    no_platform = accounts.issue_token(session, superuser, scopes=frozenset({Scope.READ, Scope.WRITE}))[1]
    assert_error(client.get(members, headers=bearer(no_platform)), 404)
    assert "lacks the scope 'platform'" in assert_error(client.get(TENANTS, headers=bearer(no_platform)), 403)["message"]
