"""The `provisioning` command line against the run's PostgreSQL database."""

import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.exc import DataError

from provisioning.accounts import registry as accounts
from provisioning.cli import main
from provisioning.enums import JobType, Role, TenantStatus
from provisioning.models import ApiToken, Tenant
from provisioning.platform import migrate
from provisioning.platform.identifiers import SLUG
from provisioning.platform.settings import load_settings
from provisioning.sites import credentials
from tests.helpers import committing


@pytest.fixture
def cli(environment):
    def invoke(*args: str):
        return CliRunner().invoke(main, list(args), env=environment, catch_exceptions=False)

    return invoke


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def all_commands(group, path=()):
    for name, command in group.commands.items():
        yield (*path, name)
        if hasattr(command, "commands"):
            yield from all_commands(command, (*path, name))


@pytest.mark.parametrize("command", [(), *all_commands(main)], ids=lambda c: " ".join(c) or "provisioning")
def test_every_command_has_help(cli, command):
    result = cli(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_an_operator_sets_up_a_tenant_whose_owner_then_uses_the_api(cli, client):
    slug = unique("acme")
    assert cli("tenant", "create", "--slug", slug, "--name", "Acme Ltd").exit_code == 0
    email = f"{slug}@example.test"
    assert cli("user", "create", "--email", email, "--tenant", slug, "--role", "owner").exit_code == 0

    created = cli("token", "create", "--email", email, "--name", "portal", "--expires-days", "7")

    assert created.exit_code == 0
    token = last_line(created.output)
    assert token.startswith("erpx_") and " " not in token
    answer = client.get("/api/v1/tenants/current", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert answer.json["data"]["slug"] == slug and answer.json["data"]["role"] == "owner"

    listed = cli("token", "list", "--email", email)
    assert token not in listed.output and "usable" in listed.output
    token_id = listed.output.split()[0]
    assert cli("token", "revoke", token_id).exit_code == 0
    assert client.get("/api/v1/tenants/current", headers={"Authorization": f"Bearer {token}"}).status_code == 401


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tenant", "create", "--slug", "Not A Slug", "--name", "x"), "slug 'Not A Slug' must be"),
        (
            ("user", "create", "--email", "a@b.test", "--tenant", "no-such-tenant", "--role", "owner"),
            "no tenant with slug 'no-such-tenant'",
        ),
        (("user", "create", "--email", "a@b.test", "--tenant", "x", "--role", "king"), "'king' is not one of"),
        (("user", "create", "--email", "not-an-email", "--superuser"), "is not an e-mail address"),
        (("token", "create", "--email", "nobody@example.test"), "no user with e-mail"),
        (("token", "revoke", str(uuid.UUID(int=0))), "no token with id"),
        (("token", "revoke", "not-a-uuid"), "is not a valid UUID"),
        (("tenant", "create", "--slug", "long-name", "--name", "n" * 201), "name is 201 characters long; at most 200"),
        (("tenant", "create", "--slug", "two-lines", "--name", "Acme\nLtd"), "has control characters"),
        (("tenant", "create", "--slug", "blank", "--name", " "), "name must not be empty"),
        (("user", "create", "--email", "a" * 250 + "@b.test", "--superuser"), "e-mail is 257 characters long; at most 254"),
        (("user", "create", "--email", "", "--superuser"), "is not an e-mail address"),
        (("user", "create", "--email", "a@b.test\nc", "--superuser"), "is not an e-mail address"),
        (("token", "create", "--email", "x@y.test", "--expires-days", "99999999"), "not in the range 1<=x<=3650"),
        (("token", "revoke", ""), "is not a valid UUID"),
        (("token", "list", "--email", "e" * 100_000), "no user with e-mail 'eeee"),
        (("db", "upgrade", "--revision", "nonexistent"), "'nonexistent' is not one of head, 0001"),
        (("db", "upgrade", "--revision", ""), "'' is not one of head"),
        (("db", "upgrade", "--revision", "head+5"), "'head+5' is not one of head"),
        (("jobs", "list", "--tenant", ""), "no tenant with slug ''"),  # not every tenant's jobs
        (("jobs", "list", "--limit", "99999999999999999999"), "not in the range 1<=x<=100000"),
        (("audit", "list", "--tenant", ""), "no tenant with slug ''"),
        (("audit", "list", "--since", "yesterday"), "does not match the formats"),
        (("dlq", "replay", ""), "no dead letter with id ''"),
        (("dlq", "list", "--limit", "99999999999999999999"), "not in the range 1<=x<=100000"),
        (("tenant", "create", "--slug", "s" * 100_000, "--name", "Huge"), "slug 'sssss"),
    ],
)
def test_bad_operator_input_exits_non_zero_with_one_clear_line(cli, args, message):
    result = cli(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output) < 2000, "no huge input echoed back whole"


def test_a_token_name_too_long_is_one_line_that_shows_no_sql_and_no_token_hash(cli, session, tenant_factory):
    email = tenant_factory.create(roles=(Role.OWNER,)).users[Role.OWNER].email
    result = cli("token", "create", "--email", email, "--name", "n" * 101)
    assert (result.exit_code, result.output.strip()) == (1, "Error: token name is 101 characters long; at most 100 are allowed")
    assert session.scalars(select(ApiToken).where(ApiToken.name.like("nnn%"))).all() == []


def test_a_database_error_is_one_line_with_no_sql_and_no_parameters(cli, tenant_factory, monkeypatch):
    email = tenant_factory.create(roles=(Role.OWNER,)).users[Role.OWNER].email
    token_hash = "9f" * 32

    def refused(*_args, **_kwargs):
        raise DataError(
            "INSERT INTO api_tokens (name, token_hash) VALUES (%(name)s, %(token_hash)s)",
            {"name": "x", "token_hash": token_hash},
            Exception("value too long for type character varying(100)\nDETAIL: a second line"),
        )

    monkeypatch.setattr(accounts, "issue_token", refused)
    result = cli("token", "create", "--email", email)

    assert result.exit_code == 1
    assert result.output.strip() == "Error: database error: value too long for type character varying(100)"


def test_a_database_without_the_schema_says_to_run_the_migrations(tmp_path):
    result = CliRunner().invoke(
        main, ["tenant", "list"], env={"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"}, catch_exceptions=False
    )
    assert result.exit_code == 1
    assert result.output.strip() == "Error: the database has no schema yet (no such table: tenants); run: provisioning db upgrade"


def test_audit_list_takes_the_readmes_since_with_minutes_and_listings_say_when_they_are_empty(cli, environment):
    slug = unique("quiet")
    assert cli("tenant", "create", "--slug", slug, "--name", "Quiet Ltd").exit_code == 0

    since = cli("audit", "list", "--tenant", slug, "--since", "2026-11-28T09:00")
    assert since.exit_code == 0, since.output
    assert "\ttenant.created\t" in since.stdout and since.stderr.strip() == "1 audit entry"
    jobs = cli("jobs", "list", "--tenant", slug)
    assert (jobs.exit_code, jobs.stdout, jobs.stderr.strip()) == (0, "", "0 jobs")
    later = cli("audit", "list", "--tenant", slug, "--since", "2999-01-01 00:00")
    assert (later.stdout, later.stderr.strip()) == ("", "0 audit entries")


@pytest.mark.parametrize("near_miss", ["{}\n", "{}\r\n", " {}", "{} ", "{}\t"], ids=["lf", "crlf", "space-", "-space", "tab"])
def test_a_slug_with_a_newline_or_a_space_around_it_is_refused_and_makes_no_tenant(cli, session, near_miss):
    slug = unique("near")
    given = near_miss.format(slug)
    result = cli("tenant", "create", "--slug", given, "--name", "Near Miss")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"Error: slug {given!r} must be {SLUG.rule}"
    assert session.scalar(select(func.count()).select_from(Tenant).where(Tenant.slug.contains(slug))) == 0


@pytest.mark.parametrize("email", ["ops@acme.exa\x00mple", "ops@acme.example\x7f", "ops@ac me.example"])
def test_an_e_mail_with_a_control_character_or_space_inside_is_refused_in_one_line(cli, email):
    result = cli("user", "create", "--email", email, "--superuser")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"Error: {email!r} is not an e-mail address"


def test_a_duplicate_slug_is_refused(cli):
    slug = unique("dup")
    assert cli("tenant", "create", "--slug", slug, "--name", "One").exit_code == 0
    result = cli("tenant", "create", "--slug", slug, "--name", "Two")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: a tenant with slug '{slug}' already exists"


def test_jobs_list_shows_a_tenants_jobs_with_their_status(cli, session, tenant_factory):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)

    result = cli("jobs", "list", "--tenant", tenant.tenant.slug)

    assert result.exit_code == 0
    assert result.output.split("\t")[:4] == [str(job.id), tenant.tenant.slug, "backup_site", "pending"]


def test_credentials_key_prints_a_new_usable_key_and_says_to_keep_it(cli, environment):
    first, second = cli("credentials-key"), cli("credentials-key")

    assert (first.exit_code, second.exit_code) == (0, 0)
    key = first.stdout.strip()
    assert credentials.is_valid_key(key) and key != second.stdout.strip()
    assert load_settings({**environment, "SITE_CREDENTIALS_KEY": key}).site_credentials_key == key
    advice = first.stderr.strip()
    assert len(advice.splitlines()) == 1 and "SITE_CREDENTIALS_KEY" in advice and "unreadable" in advice


def test_db_upgrade_builds_the_schema_from_nothing_and_is_safe_to_repeat(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    runner = CliRunner()
    env = {"DATABASE_URL": database_url}
    for _ in range(2):
        result = runner.invoke(main, ["db", "upgrade"], env=env)
        assert result.exit_code == 0, result.output
    assert migrate.current_revision(database_url) is not None
    assert "database at revision" in result.output
