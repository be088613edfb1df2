"""Who may call the API, for which tenant: bearer tokens, X-Tenant-ID, roles and operators."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from provisioning.accounts import registry as accounts
from provisioning.enums import JobType, Role, TenantStatus
from provisioning.models import ApiToken
from provisioning.platform.db import utcnow
from tests.helpers import StrictClient, assert_error, committing

pytestmark = pytest.mark.usefixtures("rolled_back")  # nothing here needs another connection to see its rows

JOBS = "/api/v1/provisioning/jobs"
CURRENT = "/api/v1/tenants/current"


@pytest.fixture
def client(app):
    app.test_client_class = StrictClient
    return app.test_client()


def bearer(token: str, tenant_ref: object | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if tenant_ref is not None:
        headers["X-Tenant-ID"] = str(tenant_ref)
    return headers


def operator(session) -> str:
    """A platform operator's token: a superuser with no membership anywhere."""
    user = accounts.create_user(session, f"operator-{uuid.uuid4().hex[:10]}@example.test", is_superuser=True)
    return accounts.issue_token(session, user, name="operator")[1]


def assert_unauthorized(response) -> dict:
    body = assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer"), response.headers.get("WWW-Authenticate")
    return body


# Tokens.


def _no_header(session, tenant):
    return {}


def _basic_scheme(session, tenant):
    return {"Authorization": f"Basic {tenant.tokens[Role.OWNER]}"}


def _empty_bearer(session, tenant):
    return {"Authorization": "Bearer "}


def _unknown_token(session, tenant):
    return bearer(accounts.TOKEN_PREFIX + "not-a-token-anyone-was-given")


def _expired_token(session, tenant):
    token, plain = accounts.issue_token(session, tenant.users[Role.OWNER], expires_in=timedelta(hours=1))
    session.execute(update(ApiToken).where(ApiToken.id == token.id).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    return bearer(plain)


def _revoked_token(session, tenant):
    token, plain = accounts.issue_token(session, tenant.users[Role.OWNER])
    accounts.revoke_token(session, token.id)
    return bearer(plain)


@pytest.mark.parametrize(
    "make_headers, reason",
    [
        (_no_header, "missing"),
        (_basic_scheme, "missing"),
        (_empty_bearer, "missing"),
        (_unknown_token, "unknown"),
        (_expired_token, "expired"),
        (_revoked_token, "revoked"),
    ],
    ids=["no-header", "basic-scheme", "empty-bearer", "unknown", "expired", "revoked"],
)
def test_a_request_without_a_usable_token_is_refused_with_a_bearer_challenge(
    client, tenant_factory, session, make_headers, reason
):
    tenant = tenant_factory.create()
    response = client.get(JOBS, headers=make_headers(session, tenant))
    body = assert_unauthorized(response)
    assert reason in body["message"]
    # RFC 6750: an error code only when credentials were sent and are bad.
    assert ('error="invalid_token"' in response.headers["WWW-Authenticate"]) == (reason != "missing")
    assert client.get(JOBS, headers=tenant.headers()).status_code == 200, "the user's other token must still work"


def test_a_token_works_until_it_expires(client, tenant_factory, session):
    tenant = tenant_factory.create()
    token, plain = accounts.issue_token(session, tenant.users[Role.MEMBER], expires_in=timedelta(hours=1))
    assert client.get(JOBS, headers=bearer(plain)).status_code == 200
    session.execute(update(ApiToken).where(ApiToken.id == token.id).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    assert "expired" in assert_unauthorized(client.get(JOBS, headers=bearer(plain)))["message"]


@pytest.mark.parametrize(
    "method, path",
    [("get", JOBS), ("post", JOBS), ("get", f"{JOBS}/{{job}}"), ("post", f"{JOBS}/{{job}}/retry"),
     ("post", f"{JOBS}/{{job}}/cancel"), ("get", f"{JOBS}/{{job}}/steps"), ("get", CURRENT)],
)  # fmt: skip
def test_every_api_endpoint_needs_a_token_and_changes_nothing_without_one(client, tenant_factory, session, method, path):
    tenant = tenant_factory.create()
    job = committing(session).request_job(tenant.id, JobType.CREATE_SITE)
    assert_unauthorized(getattr(client, method)(path.format(job=job.id), json={"job_type": "create_site"}))
    listed = client.get(JOBS, headers=tenant.headers()).json
    assert listed["meta"]["total"] == 1 and listed["data"][0]["status"] == "pending"


def test_the_docs_and_the_spec_need_no_token(client):
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_tokens_are_stored_only_as_their_sha256(client, tenant_factory, session):
    tenant = tenant_factory.create()
    token, plain = accounts.issue_token(session, tenant.users[Role.ADMIN], name="ci")
    row = session.execute(select(ApiToken.__table__).where(ApiToken.id == token.id)).mappings().one()
    assert row["token_hash"] == hashlib.sha256(plain.encode()).hexdigest()
    assert all(plain not in str(value) for value in row.values()), "the plain token must not be stored"
    assert client.get(JOBS, headers=bearer(plain)).status_code == 200


def test_a_successful_request_records_when_the_token_was_last_used(client, tenant_factory, session):
    tenant = tenant_factory.create()
    token, plain = accounts.issue_token(session, tenant.users[Role.MEMBER])
    assert token.last_used_at is None
    before = utcnow()
    assert client.get(JOBS, headers=bearer(plain)).status_code == 200
    session.refresh(token)
    assert token.last_used_at is not None and before <= token.last_used_at <= utcnow()


@pytest.mark.parametrize("tenant_status", [TenantStatus.PENDING, TenantStatus.ACTIVE], ids=["job created", "job refused"])
def test_a_write_records_the_token_use_whether_or_not_it_commits(client, tenant_factory, session, tenant_status):
    """A request that writes records the use in its own commit; one refused records it on its own."""
    tenant = tenant_factory.create(status=tenant_status)
    token, plain = accounts.issue_token(session, tenant.users[Role.OWNER])
    response = client.post(JOBS, json={"job_type": "create_site"}, headers=bearer(plain))
    assert response.status_code == (201 if tenant_status == TenantStatus.PENDING else 409)
    session.refresh(token)
    assert token.last_used_at is not None


# The tenant of a request.


@pytest.mark.parametrize("role", list(Role))
def test_the_current_tenant_shows_the_caller_their_tenant_and_role(client, tenant_factory, role):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    response = client.get(CURRENT, headers=tenant.headers(role))
    assert response.status_code == 200
    assert response.json == {
        "data": {
            "id": str(tenant.id),
            "slug": tenant.tenant.slug,
            "name": tenant.tenant.name,
            "status": "active",
            "role": role.value,
        }
    }


def test_a_user_of_several_tenants_must_name_one_with_x_tenant_id(client, tenant_factory, session):
    first, second = tenant_factory.create(), tenant_factory.create()
    accounts.add_membership(session, first.users[Role.OWNER], second.tenant, Role.MEMBER)
    for method, path in (("get", JOBS), ("post", JOBS), ("get", CURRENT)):
        body = assert_error(getattr(client, method)(path, json={"job_type": "create_site"}, headers=first.headers()), 400)
        assert "X-Tenant-ID" in body["message"]
        assert first.tenant.slug in body["message"] and second.tenant.slug in body["message"]
    assert client.get(JOBS, headers=first.headers(Role.ADMIN)).status_code == 200, "a one-tenant user needs no header"


@pytest.mark.parametrize("ref", ["slug", "id"])
def test_a_user_of_several_tenants_acts_in_the_one_named_with_its_role_there(client, tenant_factory, session, ref):
    first, second = tenant_factory.create(), tenant_factory.create()
    user_token = first.tokens[Role.OWNER]
    accounts.add_membership(session, first.users[Role.OWNER], second.tenant, Role.MEMBER)
    theirs = committing(session).request_job(second.id, JobType.CREATE_SITE)
    in_first, in_second = (bearer(user_token, getattr(made.tenant, ref)) for made in (first, second))

    assert client.get(CURRENT, headers=in_first).json["data"]["id"] == str(first.id)
    assert client.get(CURRENT, headers=in_first).json["data"]["role"] == "owner"
    assert client.get(CURRENT, headers=in_second).json["data"]["role"] == "member"

    created = client.post(JOBS, json={"job_type": "create_site"}, headers=in_first)
    assert created.status_code == 201 and created.json["data"]["tenant_id"] == str(first.id)
    assert [job["id"] for job in client.get(JOBS, headers=in_second).json["data"]] == [str(theirs.id)]
    assert client.get(f"{JOBS}/{theirs.id}", headers=in_second).status_code == 200
    assert_error(client.get(f"{JOBS}/{theirs.id}", headers=in_first), 404)
    assert_error(client.post(f"{JOBS}/{theirs.id}/cancel", headers=in_second), 403)


@pytest.mark.parametrize(
    "name_tenant",
    [lambda other: other.tenant.slug, lambda other: other.id, lambda other: "no-such-tenant", lambda other: uuid.uuid4()],
    ids=["other-slug", "other-id", "unknown-slug", "unknown-id"],
)
def test_naming_a_tenant_the_user_does_not_belong_to_is_forbidden(client, tenant_factory, session, name_tenant):
    ours, other = tenant_factory.create(), tenant_factory.create()
    job = committing(session).request_job(other.id, JobType.CREATE_SITE)
    headers = bearer(ours.tokens[Role.OWNER], name_tenant(other))
    for response in (client.get(JOBS, headers=headers), client.post(f"{JOBS}/{job.id}/cancel", headers=headers)):
        assert "X-Tenant-ID" in assert_error(response, 403)["message"]
    assert client.get(f"{JOBS}/{job.id}", headers=other.headers()).json["data"]["status"] == "pending"


@pytest.mark.parametrize("ref", ["slug", "id"])
def test_an_operator_can_read_and_create_jobs_in_any_tenant_named(client, tenant_factory, session, ref):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    headers = bearer(operator(session), getattr(tenant.tenant, ref))
    current = client.get(CURRENT, headers=headers).json["data"]
    assert (current["id"], current["role"]) == (str(tenant.id), None)
    created = client.post(JOBS, json={"job_type": "backup_site"}, headers=headers)
    assert created.status_code == 201 and created.json["data"]["tenant_id"] == str(tenant.id)
    assert [job["id"] for job in client.get(JOBS, headers=headers).json["data"]] == [created.json["data"]["id"]]
    assert client.get(f"{JOBS}/{created.json['data']['id']}", headers=tenant.headers(Role.MEMBER)).status_code == 200


def test_an_operator_must_name_a_tenant_that_exists(client, session):
    token = operator(session)
    assert "X-Tenant-ID" in assert_error(client.get(JOBS, headers=bearer(token)), 400)["message"]
    assert_error(client.get(JOBS, headers=bearer(token, "no-such-tenant")), 403)
    assert_error(client.get(JOBS, headers=bearer(token, uuid.uuid4())), 403)


@pytest.mark.parametrize("reference", ["x" * 65, "acme\x00", "acme\x07"], ids=["too-long", "nul", "control-character"])
def test_an_x_tenant_id_that_cannot_name_a_tenant_is_a_bad_request(client, session, reference):
    assert "X-Tenant-ID" in assert_error(client.get(JOBS, headers=bearer(operator(session), reference)), 400)["message"]


@pytest.mark.parametrize(
    "near_miss",
    ["{}\n", "{}\r\n", " {}", "{} ", "{}\t", "{}.", "/{}"],
    ids=["lf", "crlf", "space-", "-space", "tab", "dot", "slash"],
)
@pytest.mark.parametrize("caller", ["member", "operator"])
def test_a_tenant_slug_with_anything_around_it_in_x_tenant_id_is_a_bad_request(
    client, tenant_factory, session, near_miss, caller
):
    tenant = tenant_factory.create()
    token = tenant.tokens[Role.OWNER] if caller == "member" else operator(session)
    # Put in the request as given: a WSGI server may hand a header over with what it ended in.
    as_given = {"HTTP_X_TENANT_ID": near_miss.format(tenant.tenant.slug)}
    response = client.get(JOBS, headers=bearer(token), environ_overrides=as_given)
    assert "X-Tenant-ID" in assert_error(response, 400)["message"]


def test_a_tenant_id_in_capitals_names_the_same_tenant(client, tenant_factory, session):
    first, second = tenant_factory.create(), tenant_factory.create()
    user = first.users[Role.OWNER]
    accounts.add_membership(session, user, second.tenant, Role.MEMBER)
    response = client.get(CURRENT, headers=bearer(first.tokens[Role.OWNER], str(second.id).upper()))
    assert response.status_code == 200, response.json
    assert (response.json["data"]["slug"], response.json["data"]["role"]) == (second.tenant.slug, "member")
