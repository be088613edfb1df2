"""The audit trail: token, tenant and membership changes and job requests, with who, when and from where."""

import uuid

import pytest
from click.testing import CliRunner

from api import create_app
from provisioning.cli import main
from provisioning.enums import Role
from tests.stack import delete_queues

JOBS = "/api/v1/provisioning/jobs"


def audit_lines(environment, *args: str) -> list[list[str]]:
    result = CliRunner().invoke(main, ["audit", "list", *args], env=environment)
    assert result.exit_code == 0, result.output
    return [line.split("\t") for line in result.stdout.strip().splitlines() if line]  # the entries; their count is on stderr


@pytest.fixture
def unworked_client(settings):
    """The API on a queue no worker reads: its jobs stay pending until cancelled."""
    own = settings.model_copy(update={"provisioning_queue_name": f"{settings.provisioning_queue_name}.audit"})
    yield create_app(own).test_client()
    delete_queues(own.provisioning_queue_name)


def test_job_requests_retries_and_cancels_are_audited_with_address_and_user_agent(
    unworked_client, environment, tenant_factory
):
    client = unworked_client
    tenant = tenant_factory.create()
    headers = {**tenant.headers(Role.OWNER), "User-Agent": "portal/2.1"}
    job = client.post(JOBS, json={"job_type": "create_site"}, headers=headers).json["data"]
    assert client.post(f"{JOBS}/{job['id']}/cancel", headers=headers).status_code == 200
    retry = client.post(f"{JOBS}/{job['id']}/retry", headers=headers)
    assert retry.status_code == 409  # a cancelled job is not retried; a refusal is not audited

    lines = audit_lines(environment, "--tenant", tenant.tenant.slug)
    actions = [(line[2], line[3]) for line in lines]
    assert ("job.requested", f"job {job['id']}") in actions
    assert ("job.cancelled", f"job {job['id']}") in actions
    assert not any(action == "job.retried" for action, _ in actions)
    requested = next(line for line in lines if line[2] == "job.requested")
    assert requested[1] == f"user {tenant.users[Role.OWNER].id}"
    assert (requested[4], requested[5], requested[6]) == ("127.0.0.1", "portal/2.1", "create_site")


def test_operator_changes_are_audited_and_no_token_is_ever_written_there(environment):
    cli = CliRunner()
    slug = f"audited-{uuid.uuid4().hex[:8]}"
    email = f"{slug}@example.test"
    assert cli.invoke(main, ["tenant", "create", "--slug", slug, "--name", "Audited"], env=environment).exit_code == 0
    assert (
        cli.invoke(main, ["user", "create", "--email", email, "--tenant", slug, "--role", "admin"], env=environment).exit_code
        == 0
    )
    created = cli.invoke(main, ["token", "create", "--email", email], env=environment)
    plain = created.output.strip().splitlines()[-1]
    token_id = created.output.split()[1]
    assert cli.invoke(main, ["token", "revoke", token_id], env=environment).exit_code == 0

    everything = audit_lines(environment, "--limit", "1000")
    ours = [line for line in everything if slug in "\t".join(line) or token_id in "\t".join(line)]
    assert [line[2] for line in reversed(ours)] == [
        "tenant.created",
        "user.created",
        "membership.added",
        "token.created",
        "token.revoked",
    ]
    assert all(line[1].startswith("cli ") for line in ours)
    assert not any(plain in "\t".join(line) for line in everything)
    assert audit_lines(environment, "--tenant", slug)[0][2] == "membership.added"


def test_audit_list_can_start_from_a_moment(environment):
    assert audit_lines(environment, "--since", "2999-01-01") == []
