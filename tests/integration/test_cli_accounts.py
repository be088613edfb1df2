"""The accounts' commands: scoped, expiring tokens, a membership's role changed and removed, a
user disabled, all of a user's tokens revoked; through the same functions as the API."""

import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from provisioning.accounts import audit
from provisioning.accounts import registry as accounts
from provisioning.cli import main
from provisioning.enums import Role
from provisioning.models import ApiToken, Membership
from provisioning.platform.db import utcnow
from tests.factories import bearer
from tests.helpers import StrictClient, assert_error

JOBS = "/api/v1/provisioning/jobs"


@pytest.fixture
def cli(environment):
    def invoke(*args: str):
        return CliRunner().invoke(main, list(args), env=environment, catch_exceptions=False)

    return invoke


@pytest.fixture
def client(app):
    app.test_client_class = StrictClient
    return app.test_client()


def test_a_token_made_at_the_console_has_the_scopes_tenant_and_lifetime_asked_for(cli, client, tenant_factory, session):
    tenant = tenant_factory.create()
    email = tenant.users[Role.OWNER].email
    created = cli("token", "create", "--email", email, "--scope", "read", "--tenant", tenant.tenant.slug)
    assert created.exit_code == 0, created.output
    assert "scopes read;" in created.output
    plain = created.output.strip().splitlines()[-1]
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == accounts.hash_token(plain)))
    assert (row.scopes, row.tenant_id) == (["read"], tenant.id)
    # No --expires-days: the deployment's TOKEN_MAX_LIFETIME_DAYS (365 by default).
    assert 364 < (row.expires_at - utcnow()).total_seconds() / 86400 <= 365
    assert client.get(JOBS, headers=bearer(plain)).status_code == 200
    asked = client.post(JOBS, json={"job_type": "create_site"}, headers=bearer(plain))
    assert "lacks the scope 'write'" in assert_error(asked, 403)["message"]

    listed = cli("token", "list", "--email", email)
    assert "\tread\t" in listed.output and plain not in listed.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("--scope", "platform"), "does not allow the scope 'platform'"),
        (("--scope", "king"), "'king' is not one of"),
        (("--expires-days", "366"), "a token expires after 1 to 365 days"),
        (("--tenant", "no-such-tenant"), "no tenant with slug 'no-such-tenant'"),
    ],
)
def test_a_token_beyond_the_role_or_the_lifetime_is_refused_in_one_line(cli, tenant_factory, args, message):
    tenant = tenant_factory.create(roles=(Role.ADMIN,))
    result = cli("token", "create", "--email", tenant.users[Role.ADMIN].email, *args)
    assert result.exit_code != 0 and message in result.output


def test_a_members_role_is_changed_and_the_membership_removed_but_never_the_last_owners(cli, client, tenant_factory, session):
    tenant = tenant_factory.create()
    slug, member, owner = tenant.tenant.slug, tenant.users[Role.MEMBER], tenant.users[Role.OWNER]

    assert cli("user", "change-role", "--email", member.email, "--tenant", slug, "--role", "admin").exit_code == 0
    assert session.scalar(select(Membership.role).where(Membership.user_id == member.id)) == Role.ADMIN
    demoted = cli("user", "change-role", "--email", owner.email, "--tenant", slug, "--role", "member")
    assert demoted.exit_code != 0 and "last owner" in demoted.output
    assert "last owner" in cli("user", "remove-membership", "--email", owner.email, "--tenant", slug).output

    removed = cli("user", "remove-membership", "--email", member.email, "--tenant", slug)
    assert removed.exit_code == 0, removed.output
    assert "belong to no tenant" in assert_error(client.get(JOBS, headers=tenant.headers(Role.MEMBER)), 400)["message"]
    actions = [entry.action for entry in audit.entries(session, tenant_id=tenant.id, limit=2)]
    assert actions == ["membership.removed", "membership.changed"]
    assert all(entry.actor.startswith("cli ") for entry in audit.entries(session, tenant_id=tenant.id, limit=2))


def test_disabling_a_user_at_the_console_refuses_their_tokens_and_gives_them_no_new_one(cli, client, tenant_factory):
    tenant = tenant_factory.create()
    email = tenant.users[Role.ADMIN].email
    disabled = cli("user", "disable", "--email", email)
    assert disabled.exit_code == 0 and "1 token(s) revoked" in disabled.output
    assert "user disabled" in assert_error(client.get(JOBS, headers=tenant.headers(Role.ADMIN)), 401)["message"]
    refused = cli("token", "create", "--email", email)
    assert refused.exit_code != 0 and "disabled" in refused.output


def test_revoke_all_revokes_every_token_of_the_user_at_once(cli, client, tenant_factory, session):
    tenant = tenant_factory.create()
    owner = tenant.users[Role.OWNER]
    second = accounts.issue_token(session, owner, name=f"second-{uuid.uuid4().hex[:6]}")[1]
    revoked = cli("token", "revoke-all", "--email", owner.email)
    assert revoked.exit_code == 0 and revoked.output.startswith("2 token(s)")
    for token in (tenant.tokens[Role.OWNER], second):
        assert "revoked" in assert_error(client.get(JOBS, headers=bearer(token)), 401)["message"]
    assert client.get(JOBS, headers=tenant.headers(Role.MEMBER)).status_code == 200
