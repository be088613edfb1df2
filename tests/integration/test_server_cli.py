"""``provisioning server``: the registry of bench servers from the console, each test on a database
and queue of its own (``isolated``)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from provisioning.accounts import audit
from provisioning.cli import main
from provisioning.enums import JobStatus, JobType
from provisioning.messaging.broker import queue_depths
from provisioning.models import ProvisioningJob, Server
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from tests.factories import TenantFactory
from tests.fleet import simulated_site_on
from tests.helpers import committing, wait_for
from tests.stack import WorkerProcess

SERVER_NAMES = ("bench-a", "bench-eu")


@pytest.fixture
def session(stack):
    with stack.sessions() as session:
        yield session


@pytest.fixture
def cli(stack):
    def invoke(*args: str, **environment: str):
        return CliRunner().invoke(main, ["server", *args], env={**stack.environment, **environment}, catch_exceptions=False)

    return invoke


def rows(result) -> dict[str, list[str]]:
    """``server list``'s rows (standard output), by server name."""
    return {line.split("\t")[0]: line.split("\t")[1:] for line in result.stdout.splitlines()}


def test_an_operator_adds_lists_changes_and_removes_a_server_at_the_console(cli, stack, session):
    queue = f"{stack.settings.provisioning_queue_name}.server.bench-eu"

    added = cli("add", "bench-eu", "--capacity", "5", "--label", "region=eu", "--label", "plan=large")

    assert added.exit_code == 0, added.output
    assert added.stdout.strip() == f"server bench-eu added; its workers take jobs from {queue}"
    listed = cli("list")
    assert listed.exit_code == 0
    no_pool = "standby 0 ready, 0 making of 0"
    assert rows(listed) == {
        DEFAULT_SERVER_NAME: ["active", "0/100 sites", "0 active job(s)", no_pool, stack.settings.provisioning_queue_name, "-"],
        "bench-eu": ["active", "0/5 sites", "0 active job(s)", no_pool, queue, "plan=large,region=eu"],
    }
    assert listed.stderr.strip() == "2 servers"

    updated = cli("update", "bench-eu", "--capacity", "7", "--label", "region=us")
    assert updated.stdout.strip() == "server bench-eu: capacity 7, labels region=us, standby pool 0 (batch 1)"
    assert cli("drain", "bench-eu").stdout.strip() == "server bench-eu is draining"
    draining = cli("list", "--status", "draining")
    assert list(rows(draining)) == ["bench-eu"] and draining.stderr.strip() == "1 server"
    assert cli("down", "bench-eu").stdout.strip() == "server bench-eu is down"
    assert cli("list", "--status", "down").stdout.startswith("bench-eu\tdown\t0/7 sites")
    assert cli("activate", "bench-eu").stdout.splitlines() == ["server bench-eu is active", "sent 0 waiting job(s)"]
    assert cli("remove", "bench-eu").stdout.strip() == "server bench-eu removed"
    assert list(rows(cli("list"))) == [DEFAULT_SERVER_NAME]

    changes = [entry for entry in audit.entries(session) if entry.target == "server bench-eu"][::-1]
    assert [entry.action for entry in changes] == [
        "server.added", "server.updated", "server.draining", "server.down", "server.active", "server.removed",
    ]  # fmt: skip
    assert all(entry.actor.startswith("cli ") for entry in changes), changes


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("add", "Bench EU"), 1, "server name 'Bench EU'"),
        (("add", "bench-eu", "--capacity", "0"), 2, "--capacity"),
        (("add", "bench-eu", "--label", "region"), 2, "'region' is not NAME=VALUE"),
        (("add", "bench-eu", "--label", "Region=eu"), 1, "label name 'Region'"),
        (("update", "nowhere", "--capacity", "3"), 1, "no server named 'nowhere'"),
        (("drain", "nowhere"), 1, "no server named 'nowhere'"),
        (("down", "nowhere"), 1, "no server named 'nowhere'"),
        (("activate", "nowhere"), 1, "no server named 'nowhere'"),
        (("remove", "nowhere"), 1, "no server named 'nowhere'"),
        (("list", "--status", "broken"), 2, "'broken' is not one of"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else None,
)
def test_a_refused_command_says_why_in_one_line_and_changes_nothing(cli, session, args, code, says):
    result = cli(*args)
    assert result.exit_code == code, result.output
    assert says in result.output, result.output
    assert "Traceback" not in result.output
    assert session.scalars(select(Server.name)).all() == [DEFAULT_SERVER_NAME]


def test_a_second_server_of_the_same_name_is_refused(cli):
    assert cli("add", "bench-eu", "--capacity", "3").exit_code == 0
    again = cli("add", "bench-eu", "--capacity", "9")
    assert again.exit_code == 1 and "Error: a server named 'bench-eu' exists already" in again.output
    assert rows(cli("list"))["bench-eu"][1] == "0/3 sites"


def test_server_queue_prints_the_queue_of_this_machines_server(cli, stack):
    base = stack.settings.provisioning_queue_name
    # No SERVER_NAME: the one server of a deployment, whose queue is the one it always had.
    assert cli("queue").stdout.strip() == base
    assert cli("queue", SERVER_NAME=DEFAULT_SERVER_NAME).stdout.strip() == base
    assert cli("queue", SERVER_NAME="bench-eu").stdout.strip() == f"{base}.server.bench-eu"
    wrong = cli("queue", SERVER_NAME="Bench EU")
    assert wrong.exit_code != 0 and "server name" in wrong.output.lower(), wrong.output


def test_a_server_holding_sites_is_not_removed(cli, stack, session):
    assert cli("add", "bench-a").exit_code == 0
    tenant = TenantFactory(session).create()
    job = committing(session).request_job(tenant.id, JobType.CREATE_SITE, options={"server": "bench-a"})

    refused = cli("remove", "bench-a")

    assert refused.exit_code == 1
    assert "Error: server 'bench-a' still holds 1 site(s)" in refused.output
    assert rows(cli("list"))["bench-a"][:2] == ["active", "1/100 sites"]
    committing(session).cancel_job(tenant.id, job.id)  # the tenant, with no site, leaves the server
    assert cli("remove", "bench-a").exit_code == 0
    assert "bench-a" not in rows(cli("list"))


def test_activate_sends_the_jobs_held_while_the_server_was_down_and_its_worker_runs_them(cli, stack, session):
    assert cli("add", "bench-a").exit_code == 0
    tenant = simulated_site_on(stack, session, "bench-a")
    assert cli("down", "bench-a").exit_code == 0
    service = committing(session, dispatch=stack.dispatcher.send_job)

    held = service.request_job(tenant.id, JobType.BACKUP_SITE)

    assert held.status == JobStatus.PENDING and held.dispatched_at is None
    assert held.message.startswith("Held: server bench-a is down")
    assert rows(cli("list"))["bench-a"][2] == "1 active job(s)"

    activated = cli("activate", "bench-a")

    assert activated.stdout.splitlines() == ["server bench-a is active", "sent 1 waiting job(s)"]
    session.expire_all()
    assert session.get(ProvisioningJob, held.id).dispatched_at is not None
    queue = stack.settings.queue_of_server("bench-a")
    assert queue_depths(stack.settings, ["bench-a"])[queue] == 1
    worker = WorkerProcess({**stack.environment, "SERVER_NAME": "bench-a"}, stack.dispatcher)
    try:

        def finished():
            session.expire_all()
            return session.get(ProvisioningJob, held.id).status in (JobStatus.COMPLETED, JobStatus.FAILED)

        wait_for(finished, timeout=30, what="bench-a's worker to run the held backup")
    finally:
        worker.stop()
    assert session.get(ProvisioningJob, held.id).status == JobStatus.COMPLETED
