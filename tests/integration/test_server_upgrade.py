"""A deployment of one bench server upgrades to the release with servers without a change of
configuration (migration 0012 makes its one server), and a worker started for the wrong queue
refuses to run."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, pool, select, text

from provisioning.enums import JobStatus, JobType, ServerStatus, TenantStatus
from provisioning.messaging.broker import Dispatcher, queue_depths
from provisioning.models import ProvisioningJob, Server, Tenant
from provisioning.platform import migrate
from provisioning.platform.db import session_factory
from provisioning.platform.settings import DEFAULT_SERVER_NAME, load_settings
from tests.helpers import committing, wait_for
from tests.processes import PROJECT_ROOT, GroupProcess, procfile_commands
from tests.stack import RUN_ID, delete_queues, empty_database, process_environment

# What a deployment had before servers existed: its tenants in every state, and a job waiting.
TENANTS = {"active-1": "active", "active-2": "active", "waiting": "pending", "broken": "failed", "gone": "deleted"}


def insert_deployment_of_release_0011(url: str) -> dict[str, uuid.UUID]:
    """Rows as release 0011 wrote them, in plain SQL (the models of today have columns 0011 has not)."""
    ids = {slug: uuid.uuid4() for slug in TENANTS}
    now = datetime.now(timezone.utc)
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.begin() as connection:
        for slug, status in TENANTS.items():
            connection.execute(
                text(
                    "INSERT INTO tenants (id, slug, name, status, created_at, updated_at) "
                    "VALUES (:id, :slug, :name, :status, :now, :now)"
                ),
                {"id": ids[slug], "slug": f"{slug}-{ids[slug].hex[:6]}", "name": slug, "status": status, "now": now},
            )
        # The waiting tenant's create, asked for and never published (its process died before).
        connection.execute(
            text(
                "INSERT INTO provisioning_jobs (id, tenant_id, job_type, status, progress, message, created_at) "
                "VALUES (:id, :tenant, 'create_site', 'pending', 0, 'Waiting for a worker', :now)"
            ),
            {"id": ids["waiting"], "tenant": ids["waiting"], "now": now - timedelta(minutes=1)},
        )
    engine.dispose()
    return ids


class ProcfileWorker:
    """The Procfile's ``worker`` line exactly, as a deployment runs it."""

    def __init__(self, environment: dict[str, str]):
        self.name = f"upgrade-{RUN_ID}-{uuid.uuid4().hex[:6]}@localhost"
        self.dispatcher = Dispatcher(load_settings(environment))
        log = Path(tempfile.gettempdir()) / f"{self.name.split('@')[0]}.log"
        env = process_environment({**environment, "WORKER_NAME": self.name})
        self.group = GroupProcess(self.name, procfile_commands()["worker"], env, log)
        try:
            wait_for(self._answers_ping, timeout=60, interval=0.5, what=f"worker {self.name} to answer a ping")
        except BaseException:
            self.group.stop(signal.SIGKILL)
            raise

    def _answers_ping(self) -> bool:
        self.group.assert_alive()
        return bool(self.dispatcher.app.control.ping(destination=[self.name], timeout=0.5))

    def stop(self) -> None:
        if self.group.process.poll() is None:
            self.group.process.send_signal(signal.SIGTERM)
        self.group.wait_stopped(timeout=30)
        print(self.group.describe())  # shown by pytest when the test failed


@pytest.fixture
def upgraded(environment):
    """A database of release 0011 with a deployment's rows, then upgraded; and that deployment's
    environment: its own queue, and no SERVER_NAME, as before."""
    suffix = uuid.uuid4().hex[:8]
    queue = f"{environment['PROVISIONING_QUEUE_NAME']}.upgrade-{suffix}"
    with empty_database(f"provisioning_test_{RUN_ID}_upgrade_{suffix}") as url:
        migrate.upgrade(url, "0011")
        ids = insert_deployment_of_release_0011(url)
        migrate.upgrade(url)
        env = {**environment, "DATABASE_URL": url, "PROVISIONING_QUEUE_NAME": queue}
        assert "SERVER_NAME" not in {name.upper() for name in env}
        try:
            yield env, ids
        finally:
            delete_queues(queue)


def test_a_deployment_of_one_server_upgrades_onto_server_default_and_its_worker_runs_jobs_unchanged(upgraded):
    env, ids = upgraded
    settings = load_settings(env)
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        [server] = session.scalars(select(Server)).all()
        assert (server.name, server.status, server.labels) == (DEFAULT_SERVER_NAME, ServerStatus.ACTIVE, {})
        placed = {slug: session.get(Tenant, tenant_id).server_id for slug, tenant_id in ids.items()}
        assert placed == {slug: (None if status == "deleted" else server.id) for slug, status in TENANTS.items()}
        assert server.site_count == 4 and server.capacity >= server.site_count
        # The one server's queue is the one the deployment always had.
        assert settings.worker_queue_name == settings.provisioning_queue_name == env["PROVISIONING_QUEUE_NAME"]

        worker = ProcfileWorker(env)
        try:
            service = committing(session, dispatch=Dispatcher(settings).send_job)
            backup = service.request_job(ids["active-1"], JobType.BACKUP_SITE)
            # The create that waited since before the upgrade is published by the worker's start-up
            # sweep, to the deployment's queue, where the worker takes it.

            def finished() -> list[JobStatus]:
                session.expire_all()
                statuses = [session.get(ProvisioningJob, job_id).status for job_id in (backup.id, ids["waiting"])]
                return statuses if all(status in (JobStatus.COMPLETED, JobStatus.FAILED) for status in statuses) else []

            assert wait_for(finished, timeout=30, what="the upgraded deployment's jobs to finish") == [JobStatus.COMPLETED] * 2
        finally:
            worker.stop()
        assert "sent to its queue" not in worker.group.output()
        session.expire_all()
        assert session.get(Tenant, ids["waiting"]).status == TenantStatus.ACTIVE
        assert session.get(Server, server.id).site_count == 4
    # No queue of its own was made for the default server: its jobs use the deployment's queue.
    assert queue_depths(settings, [DEFAULT_SERVER_NAME]) == {
        settings.provisioning_queue_name: 0,
        settings.dead_letter_queue_name: 0,
    }


def start_worker(environment: dict[str, str], queue: str) -> subprocess.CompletedProcess:
    """``celery -A tasks worker -Q <queue>``, for at most a minute."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "worker",
        "-Q",
        queue,
        "-P",
        "prefork",
        "-c",
        "1",
        "--without-mingle",
    ]
    env = process_environment(environment)
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("server_name", [None, "bench-b"])
def test_a_worker_started_on_a_queue_that_is_not_its_servers_exits_at_once_saying_so(environment, settings, server_name):
    env = {**environment, **({"SERVER_NAME": server_name} if server_name else {})}
    own = load_settings(env).worker_queue_name
    # The queue of the other server: bench-b's for the default server's worker, and the other way round.
    other = settings.queue_of_server("bench-b" if server_name is None else DEFAULT_SERVER_NAME)

    result = start_worker(env, other)

    assert result.returncode != 0
    expected = (
        f"configuration error: -Q {other} is not the queue of server {server_name or DEFAULT_SERVER_NAME} (SERVER_NAME), "
        f"which is {own}"
    )
    assert expected in result.stderr, result.stderr
    # It took nothing from that queue: it never even declared it.
    if server_name is None:
        assert queue_depths(settings, ["bench-b"])[other] is None
