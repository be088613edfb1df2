"""Scoped, expiring tokens: what each may do (403 naming the missing scope), how long it lives, a
token made before scopes, disabling a user, a caller's own tokens, and the token shown only once."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from api import create_app
from provisioning.accounts import audit
from provisioning.accounts import registry as accounts
from provisioning.enums import JobStatus, JobType, Role, Scope, TenantStatus
from provisioning.models import ApiToken
from provisioning.platform.db import utcnow
from tests.factories import bearer, operator_headers
from tests.helpers import StrictClient, assert_error
from tests.integration.test_api_jobs import finished_job

pytestmark = pytest.mark.usefixtures("rolled_back")  # nothing here needs another connection to see its rows

JOBS = "/api/v1/provisioning/jobs"
TENANTS = "/api/v1/tenants"
USERS = "/api/v1/users"
TOKENS = "/api/v1/tokens"
SERVERS = "/api/v1/servers"


@pytest.fixture
def client(app):
    app.test_client_class = StrictClient
    return app.test_client()


def token_of(session, user, **options) -> str:
    return accounts.issue_token(session, user, **options)[1]


def lacks(response, scope: str) -> None:
    assert assert_error(response, 403)["message"] == f"this token lacks the scope {scope!r}"


def test_a_read_only_token_reads_but_may_not_ask_for_a_job(client, tenant_factory, session):
    tenant = tenant_factory.create()
    read_only = token_of(session, tenant.users[Role.OWNER], scopes=frozenset({Scope.READ}))
    assert client.get(JOBS, headers=bearer(read_only)).status_code == 200
    lacks(client.post(JOBS, json={"job_type": "create_site"}, headers=bearer(read_only)), "write")
    lacks(client.post(f"{TENANTS}/current/admin-password", headers=bearer(read_only)), "write")
    lacks(client.post(f"{TENANTS}/{tenant.tenant.slug}/members", json={}, headers=bearer(read_only)), "write")
    write_only = token_of(session, tenant.users[Role.OWNER], scopes=frozenset({Scope.WRITE}))
    lacks(client.get(JOBS, headers=bearer(write_only)), "read")
    assert client.post(JOBS, json={"job_type": "create_site"}, headers=bearer(write_only)).status_code == 201


def test_platform_endpoints_need_the_platform_scope_and_a_superuser(client, tenant_factory, session):
    owner = tenant_factory.create(roles=(Role.OWNER,))
    for path in (TENANTS, USERS, SERVERS):
        assert "platform operators" in assert_error(client.get(path, headers=owner.headers()), 403)["message"]
    superuser = accounts.create_user(session, f"op-{uuid.uuid4().hex[:8]}@example.test", is_superuser=True)
    without = token_of(session, superuser, scopes=frozenset({Scope.READ, Scope.WRITE}))
    for path in (TENANTS, USERS, SERVERS, f"{USERS}/{superuser.id}"):
        lacks(client.get(path, headers=bearer(without)), "platform")
    platform = token_of(session, superuser, scopes=frozenset({Scope.PLATFORM}))
    assert client.get(TENANTS, headers=bearer(platform)).status_code == 200


def test_a_scope_the_role_does_not_allow_is_a_422_that_names_it(client, tenant_factory, session):
    tenant = tenant_factory.create()
    tokens = f"{TENANTS}/{tenant.tenant.slug}/tokens"
    member = str(tenant.users[Role.MEMBER].id)
    asked = client.post(tokens, json={"user_id": member, "scopes": ["read", "write"]}, headers=tenant.headers())
    refused = assert_error(asked, 422)
    assert "does not allow the scope 'write'" in refused["errors"]["json"]["scopes"][0]
    owner = str(tenant.users[Role.OWNER].id)
    refused = assert_error(client.post(tokens, json={"user_id": owner, "scopes": ["platform"]}, headers=tenant.headers()), 422)
    assert "'platform'" in refused["errors"]["json"]["scopes"][0]
    assert_error(client.post(tokens, json={"user_id": owner, "scopes": []}, headers=tenant.headers()), 422)
    assert_error(client.post(tokens, json={"user_id": owner, "scopes": ["admin"]}, headers=tenant.headers()), 422)
    for name in ("two\nlines", "tab\t", "\ud800"):
        assert_error(client.post(tokens, json={"user_id": owner, "name": name}, headers=tenant.headers()), 422)
    default = client.post(tokens, json={"user_id": member}, headers=tenant.headers())
    assert default.status_code == 201 and default.json["data"]["scopes"] == ["read"]


def test_a_token_lives_at_most_the_maximum_lifetime_which_is_also_its_default(settings, session, tenant_factory, rolled_back):
    short = settings.model_copy(update={"token_max_lifetime_days": 30})
    app = create_app(short)
    app.extensions["provisioning_sessions"].configure(bind=rolled_back, join_transaction_mode="create_savepoint")
    app.test_client_class = StrictClient
    client = app.test_client()
    tenant = tenant_factory.create()
    tokens = f"{TENANTS}/{tenant.tenant.slug}/tokens"
    owner = str(tenant.users[Role.OWNER].id)

    too_long = assert_error(client.post(tokens, json={"user_id": owner, "expires_in_days": 31}, headers=tenant.headers()), 422)
    assert too_long["errors"]["json"]["expires_in_days"] == ["a token expires after 1 to 30 days"]
    assert_error(client.post(tokens, json={"user_id": owner, "expires_in_days": 0}, headers=tenant.headers()), 422)
    default = client.post(tokens, json={"user_id": owner}, headers=tenant.headers()).json["data"]
    expires_at = session.scalar(select(ApiToken.expires_at).where(ApiToken.id == uuid.UUID(default["id"])))
    assert timedelta(days=30) - timedelta(minutes=1) < expires_at - utcnow() <= timedelta(days=30)


def test_an_expired_token_is_refused(client, tenant_factory, session):
    tenant = tenant_factory.create()
    issued = client.post(
        f"{TENANTS}/{tenant.tenant.slug}/tokens",
        json={"user_id": str(tenant.users[Role.ADMIN].id), "expires_in_days": 1},
        headers=tenant.headers(),
    ).json["data"]
    assert client.get(JOBS, headers=bearer(issued["token"])).status_code == 200
    session.execute(update(ApiToken).where(ApiToken.id == uuid.UUID(issued["id"])).values(expires_at=utcnow()))
    session.commit()
    assert "expired" in assert_error(client.get(JOBS, headers=bearer(issued["token"])), 401)["message"]


@pytest.mark.parametrize(
    "role, may_write", [(Role.OWNER, True), (Role.ADMIN, True), (Role.MEMBER, False)], ids=["owner", "admin", "member"]
)
def test_a_token_made_before_scopes_may_do_what_its_users_role_allows(client, tenant_factory, session, role, may_write):
    tenant = tenant_factory.create()
    session.execute(update(ApiToken).where(ApiToken.user_id == tenant.users[role].id).values(scopes=None))
    session.commit()
    assert client.get(JOBS, headers=tenant.headers(role)).status_code == 200
    asked = client.post(JOBS, json={"job_type": "create_site"}, headers=tenant.headers(role))
    if may_write:
        assert asked.status_code == 201
    else:
        assert "owner or admin" in assert_error(asked, 403)["message"]
    assert "platform operators" in assert_error(client.get(TENANTS, headers=tenant.headers(role)), 403)["message"]
    listed = client.get(TOKENS, headers=tenant.headers(role)).json["data"]
    assert [token["scopes"] for token in listed] == [None]


def test_an_operators_token_made_before_scopes_still_reaches_the_platform(client, session):
    headers = operator_headers(session)
    plain = headers["Authorization"].removeprefix("Bearer ")
    session.execute(update(ApiToken).where(ApiToken.token_hash == accounts.hash_token(plain)).values(scopes=None))
    session.commit()
    assert client.get(SERVERS, headers=headers).status_code == 200
    assert client.get(TENANTS, headers=headers).status_code == 200


def test_disabling_a_user_refuses_all_their_tokens_at_once_and_gives_them_no_new_one(client, tenant_factory, session):
    tenant = tenant_factory.create()
    operator = operator_headers(session)
    user = tenant.users[Role.ADMIN]
    another = token_of(session, user, tenant=tenant.tenant, scopes=frozenset({Scope.READ}))
    for token in (tenant.tokens[Role.ADMIN], another):
        assert client.get(JOBS, headers=bearer(token)).status_code == 200

    disabled = client.post(f"{USERS}/{user.id}/disable", headers=operator)
    assert disabled.status_code == 200 and disabled.json["data"]["disabled_at"] is not None
    for token in (tenant.tokens[Role.ADMIN], another):
        assert "user disabled" in assert_error(client.get(JOBS, headers=bearer(token)), 401)["message"]
    assert all(token.revoked_at is not None for token in session.scalars(select(ApiToken).where(ApiToken.user_id == user.id)))
    assert "disabled" in assert_error(client.post(f"{USERS}/{user.id}/tokens", json={}, headers=operator), 409)["message"]
    assert client.get(JOBS, headers=tenant.headers(Role.OWNER)).status_code == 200, "the other members' tokens still work"
    # The disabled user's refused requests are in the trail too (request.refused), between the deeds.
    actions = [entry.action for entry in audit.entries(session, limit=10) if entry.action != "request.refused"]
    assert actions[:2] == ["tokens.revoked_all", "user.disabled"]


def test_an_operator_issues_and_revokes_all_of_a_users_tokens(client, tenant_factory, session):
    tenant = tenant_factory.create(roles=(Role.OWNER,))
    operator = operator_headers(session)
    owner = tenant.users[Role.OWNER]
    issued = client.post(f"{USERS}/{owner.id}/tokens", json={"name": "portal", "expires_in_days": 10}, headers=operator)
    assert issued.status_code == 201 and issued.headers["Cache-Control"] == "no-store"
    assert issued.json["data"]["scopes"] == ["read", "write"] and issued.json["data"]["tenant_id"] is None
    listed = client.get(f"{USERS}/{owner.id}/tokens", headers=operator).json
    assert listed["meta"]["total"] == 2

    revoked = client.delete(f"{USERS}/{owner.id}/tokens", headers=operator)
    assert revoked.json == {"data": {"revoked": 2}}
    for token in (issued.json["data"]["token"], tenant.tokens[Role.OWNER]):
        assert "revoked" in assert_error(client.get(JOBS, headers=bearer(token)), 401)["message"]
    assert client.delete(f"{USERS}/{owner.id}/tokens", headers=operator).json == {"data": {"revoked": 0}}
    assert_error(client.delete(f"{USERS}/{uuid.uuid4()}/tokens", headers=operator), 404)


def test_a_tenant_bound_token_acts_for_that_tenant_alone(client, tenant_factory, session):
    first, second = tenant_factory.create(), tenant_factory.create()
    user = first.users[Role.OWNER]
    accounts.add_membership(session, user, second.tenant, Role.OWNER)
    bound = token_of(session, user, tenant=first.tenant)
    assert client.get("/api/v1/tenants/current", headers=bearer(bound)).json["data"]["slug"] == first.tenant.slug
    elsewhere = {**bearer(bound), "X-Tenant-ID": second.tenant.slug}
    assert_error(client.get(JOBS, headers=elsewhere), 403)
    assert_error(client.get(f"{TENANTS}/{second.tenant.slug}/members", headers=bearer(bound)), 404)


def test_removing_a_member_revokes_their_tokens_for_that_tenant(client, tenant_factory, session):
    tenant = tenant_factory.create()
    member = tenant.users[Role.MEMBER]
    bound = token_of(session, member, tenant=tenant.tenant)
    assert client.delete(f"{TENANTS}/{tenant.tenant.slug}/members/{member.id}", headers=tenant.headers()).status_code == 200
    assert "revoked" in assert_error(client.get(JOBS, headers=bearer(bound)), 401)["message"]


def test_a_caller_lists_and_revokes_only_their_own_tokens(client, tenant_factory, session):
    tenant = tenant_factory.create()
    member = tenant.users[Role.MEMBER]
    second = token_of(session, member, name="laptop", scopes=frozenset({Scope.READ}))
    listed = client.get(TOKENS, headers=tenant.headers(Role.MEMBER)).json
    assert listed["meta"]["total"] == 2 and {token["name"] for token in listed["data"]} == {"test", "laptop"}
    assert all("token" not in token and "token_hash" not in token for token in listed["data"])

    someone_elses = session.scalar(select(ApiToken.id).where(ApiToken.user_id == tenant.users[Role.OWNER].id))
    assert_error(client.delete(f"{TOKENS}/{someone_elses}", headers=tenant.headers(Role.MEMBER)), 404)
    laptop = next(token["id"] for token in listed["data"] if token["name"] == "laptop")
    assert client.delete(f"{TOKENS}/{laptop}", headers=tenant.headers(Role.MEMBER)).json["data"]["revoked_at"]
    assert_error(client.get(JOBS, headers=bearer(second)), 401)
    assert client.get(JOBS, headers=tenant.headers(Role.OWNER)).status_code == 200


def test_the_plain_token_is_in_its_creation_answer_alone_never_in_listings_the_audit_trail_or_logs(
    client, tenant_factory, session, caplog
):
    tenant = tenant_factory.create()
    operator = operator_headers(session)
    tokens = f"{TENANTS}/{tenant.tenant.slug}/tokens"
    with caplog.at_level(logging.DEBUG):
        created = client.post(tokens, json={"user_id": str(tenant.users[Role.MEMBER].id), "name": "ci"}, headers=tenant.headers())
        plain = created.json["data"]["token"]
        assert created.headers["Cache-Control"] == "no-store"
        assert plain.startswith(accounts.TOKEN_PREFIX) and plain.startswith(created.json["data"]["prefix"])
        assert client.get(JOBS, headers=bearer(plain)).status_code == 200
        answers = [
            client.get(tokens, headers=tenant.headers()),
            client.get(TOKENS, headers=bearer(plain)),
            client.get(f"{USERS}/{tenant.users[Role.MEMBER].id}/tokens", headers=operator),
            client.delete(f"{tokens}/{created.json['data']['id']}", headers=tenant.headers()),
        ]
    assert all(answer.status_code == 200 and plain not in answer.get_data(as_text=True) for answer in answers)
    assert plain not in caplog.text
    entries = audit.entries(session, tenant_id=tenant.id)
    assert {"token.created", "token.revoked"} <= {entry.action for entry in entries}
    assert not any(plain in f"{entry.target} {entry.detail}" for entry in entries)


def test_an_owner_can_draw_no_operator_into_the_tenant_nor_borrow_one_s_powers(client, tenant_factory, session):
    """An owner holds the tokens it makes for its members: such a token must never carry a platform
    operator's powers, and an owner may not make an operator a member to get one."""
    tenant, other = tenant_factory.create(status=TenantStatus.ACTIVE), tenant_factory.create()
    operator_user = accounts.create_user(session, f"op-{uuid.uuid4().hex[:8]}@example.test", is_superuser=True)
    owner = tenant.headers()
    members = f"{TENANTS}/{tenant.tenant.slug}/members"
    refused = client.post(members, json={"email": operator_user.email, "role": "owner"}, headers=owner)
    assert "has an account already" in assert_error(refused, 409)["message"]  # not that it is an operator

    # An operator made the operator a member (say, to look after the tenant); the owner makes
    # that member a token: it acts in the member's role alone.
    operator = operator_headers(session)
    assert client.post(members, json={"email": operator_user.email, "role": "admin"}, headers=operator).status_code == 201
    issued = client.post(f"{TENANTS}/{tenant.tenant.slug}/tokens", json={"user_id": str(operator_user.id)}, headers=owner)
    assert issued.status_code == 201 and set(issued.json["data"]["scopes"]) == {"read", "write"}
    borrowed = bearer(issued.json["data"]["token"])
    suspend = client.post(JOBS, json={"job_type": "suspend_site"}, headers=borrowed)
    assert "only platform operators" in assert_error(suspend, 403)["message"]
    lacks(client.get(SERVERS, headers=borrowed), "platform")
    elsewhere = {**borrowed, "X-Tenant-ID": other.tenant.slug}
    assert_error(client.get(JOBS, headers=elsewhere), 403)
    assert_error(client.get(f"{TENANTS}/{other.tenant.slug}/members", headers=borrowed), 404)


def test_a_token_bound_to_a_tenant_reaches_none_of_its_user_s_other_tokens(client, tenant_factory, session):
    tenant, other = tenant_factory.create(), tenant_factory.create()
    member = tenant.users[Role.MEMBER]
    accounts.add_membership(session, member, other.tenant, Role.ADMIN)
    unbound = accounts.issue_token(session, member, name="the member's own")[0]
    bound_elsewhere = accounts.issue_token(session, member, tenant=other.tenant)[0]
    issued = client.post(f"{TENANTS}/{tenant.tenant.slug}/tokens", json={"user_id": str(member.id)}, headers=tenant.headers())
    held_by_the_owner = bearer(issued.json["data"]["token"])

    listed = {token["id"] for token in client.get(TOKENS, headers=held_by_the_owner).json["data"]}
    assert listed == {issued.json["data"]["id"]}
    for token in (unbound, bound_elsewhere):
        assert_error(client.delete(f"{TOKENS}/{token.id}", headers=held_by_the_owner), 404)
        session.refresh(token)
        assert token.revoked_at is None
    # The member's own unbound token still sees and revokes all of theirs.
    assert len(client.get(TOKENS, headers=bearer(tenant.tokens[Role.MEMBER])).json["data"]) == 4


def test_an_owner_adds_new_users_only_and_an_operator_no_disabled_one(client, tenant_factory, session):
    """An existing user belongs to others (their unbound tokens would have to name a tenant from
    then on); the owner is told so, whatever else the user is, and learns nothing more."""
    tenant, elsewhere = tenant_factory.create(), tenant_factory.create()
    disabled = accounts.create_user(session, f"gone-{uuid.uuid4().hex[:8]}@example.test")
    accounts.disable_user(session, disabled)
    members = f"{TENANTS}/{tenant.tenant.slug}/members"
    for existing in (elsewhere.users[Role.MEMBER], disabled):
        refused = client.post(members, json={"email": existing.email, "role": "member"}, headers=tenant.headers())
        assert assert_error(refused, 409)["message"] == (
            f"{existing.email} has an account already; ask the platform to add an existing user to a tenant"
        )
    operator = operator_headers(session)
    added = client.post(members, json={"email": elsewhere.users[Role.MEMBER].email, "role": "member"}, headers=operator)
    assert added.status_code == 201
    refused = client.post(members, json={"email": disabled.email, "role": "member"}, headers=operator)
    assert "is disabled" in assert_error(refused, 409)["message"]


def test_an_owner_may_neither_retry_nor_cancel_an_operators_move(client, tenant_factory, session):
    """Moving a site is the operators' decision: the owner can no more take it again (a retry, onto
    a server with no room kept for it) or stop it (a cancel) than ask for it."""
    failed_here = tenant_factory.create(status=TenantStatus.FAILED)
    pending_here = tenant_factory.create(status=TenantStatus.ACTIVE)
    failed = finished_job(session, failed_here, JobStatus.FAILED, job_type=JobType.MOVE_SITE)
    pending = finished_job(session, pending_here, JobStatus.PENDING, job_type=JobType.MOVE_SITE)
    failed.options = pending.options = {"server": "bench-eu-2", "from_server": "default"}
    session.commit()
    for refused in (
        client.post(f"{JOBS}/{failed.id}/retry", headers=failed_here.headers()),
        client.post(f"{JOBS}/{pending.id}/cancel", headers=pending_here.headers()),
    ):
        assert assert_error(refused, 403)["message"] == "only platform operators may ask for, retry or cancel move_site"
