"""Three bench servers on one machine, each with its own fake bench and its own worker process
(SERVER_NAME), on PostgreSQL and RabbitMQ: every job runs on the server its tenant is placed on,
a message that reaches another server's worker is sent on, and a server that is down holds its jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from api import create_app
from provisioning.accounts.audit import SYSTEM
from provisioning.enums import JobStatus, JobType, ServerStatus
from provisioning.jobs.repairs import JobRepairs
from provisioning.models import JobEvent, Server, Tenant
from provisioning.operations.sweeper import sweep
from provisioning.platform.db import UnitOfWork
from provisioning.servers.placement import Placement
from provisioning.servers.registry import ServerRegistry
from tests.factories import TenantFactory, operator_headers
from tests.fleet import fleet
from tests.helpers import StrictClient, committing, wait_for
from tests.records import read_job


@pytest.fixture
def client(isolated):
    app = create_app(isolated.settings)
    app.test_client_class = StrictClient
    return app.test_client()


def ask(client, tenant, job_type: str, **body) -> dict:
    response = client.post("/api/v1/provisioning/jobs", json={"job_type": job_type, **body}, headers=tenant.headers())
    assert response.status_code == 201, response.json
    return response.json["data"]


def finished(isolated, job_id, timeout: float = 60):
    def done():
        job = read_job(isolated.sessions, job_id)
        return job.status in (JobStatus.COMPLETED, JobStatus.FAILED) and job

    return wait_for(done, timeout=timeout, what=f"job {job_id} to finish")


def server_of(isolated, tenant) -> str | None:
    with isolated.session() as session:
        seat = Placement(session).seat_of(tenant.id)
        return seat and seat.name


def test_each_tenants_jobs_run_on_the_server_it_is_placed_on_and_a_full_fleet_says_so(isolated, client, tmp_path):
    with fleet(isolated, tmp_path, ("a", "b", "c"), capacity=2) as servers, isolated.session() as session:
        tenants = [TenantFactory(session).create() for _ in range(6)]
        jobs = {tenant.id: ask(client, tenant, "create_site")["id"] for tenant in tenants}
        for tenant in tenants:
            job = finished(isolated, jobs[tenant.id])
            placed = servers[server_of(isolated, tenant)]
            assert job.status == JobStatus.COMPLETED, job.error
            assert job.worker.startswith(placed.worker.name), (job.worker, placed.name)
            assert [name for name, server in servers.items() if server.holds(tenant.tenant.slug)] == [placed.name]
        # Two each: the fewest sites first, and never more than the capacity.
        counts = dict(session.execute(select(Server.name, Server.site_count).where(Server.name.in_(servers))).all())
        assert counts == {"a": 2, "b": 2, "c": 2}

        seventh = TenantFactory(session).create()
        refused = client.post("/api/v1/provisioning/jobs", json={"job_type": "create_site"}, headers=seventh.headers())
        assert refused.status_code == 409
        assert "no active server has room for another site" in refused.json["message"]
        assert session.scalar(select(func.count()).select_from(Tenant).where(Tenant.server_id.is_not(None))) == 6


def test_a_message_that_reaches_another_servers_worker_is_sent_on_to_its_own_and_runs_there(isolated, tmp_path):
    with fleet(isolated, tmp_path, ("a", "b")) as servers, isolated.session() as session:
        tenant = TenantFactory(session).create()
        # Recorded, never sent: then sent, by hand, to the queue of the server the tenant is not on.
        job = committing(session).request_job(tenant.id, JobType.CREATE_SITE, options={"server": "a"})
        isolated.dispatcher.send_job(job.id, "b")

        done = finished(isolated, job.id)
        assert done.status == JobStatus.COMPLETED, done.error
        assert done.worker.startswith(servers["a"].worker.name)
        assert servers["a"].holds(tenant.tenant.slug) and not servers["b"].holds(tenant.tenant.slug)
        wait_for(lambda: "it runs on server a, not b; sent to its queue" in servers["b"].worker.output(), timeout=10)


def test_a_down_servers_jobs_are_held_pending_saying_why_and_sent_when_it_is_active_again(isolated, client, tmp_path):
    operator = operator_headers(isolated.session())
    with fleet(isolated, tmp_path, ("a", "b")) as servers, isolated.session() as session:
        on_a, on_b = TenantFactory(session).create(), TenantFactory(session).create()
        for tenant, server in ((on_a, "a"), (on_b, "b")):
            assert finished(isolated, pinned(isolated, session, tenant, server)).status == JobStatus.COMPLETED

        down = client.patch("/api/v1/servers/b", json={"status": "down"}, headers=operator)
        assert down.status_code == 200 and down.json["data"]["status"] == "down"
        held = ask(client, on_b, "backup_site")
        assert held["status"] == "pending" and held["message"].startswith("Held: server b is down")
        # The other server works on meanwhile, and a sweep does not send the held job either.
        assert finished(isolated, ask(client, on_a, "backup_site")["id"]).status == JobStatus.COMPLETED
        report = sweep(isolated.settings, isolated.sessions, isolated.dispatcher.send_job)
        assert held["id"] not in map(str, report.republished)
        job = read_job(isolated.sessions, held["id"])
        assert (job.status, job.dispatched_at, job.worker) == (JobStatus.PENDING, None, None)
        figures = {server.name: server for server in ServerRegistry(session, SYSTEM).figures()}
        assert (figures["b"].status, figures["b"].pending_jobs) == (ServerStatus.DOWN, 1)

        up = client.patch("/api/v1/servers/b", json={"status": "active"}, headers=operator)
        assert up.status_code == 200
        done = finished(isolated, held["id"])
        assert done.status == JobStatus.COMPLETED, done.error
        assert done.worker.startswith(servers["b"].worker.name)


def test_a_message_of_a_down_server_already_in_its_queue_is_held_by_its_worker_not_run(isolated, tmp_path):
    with fleet(isolated, tmp_path, ("a",)) as servers, isolated.session() as session:
        tenant = TenantFactory(session).create()
        assert finished(isolated, pinned(isolated, session, tenant, "a")).status == JobStatus.COMPLETED
        backup = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
        ServerRegistry(session, SYSTEM).set_status("a", ServerStatus.DOWN)
        session.commit()
        isolated.dispatcher.send_job(backup.id, "a")  # sent before the operator's mark reached anyone

        def held():
            with isolated.session() as fresh:
                return fresh.scalar(select(JobEvent.detail).where(JobEvent.job_id == backup.id, JobEvent.kind == "held"))

        assert wait_for(held, timeout=20).startswith("Held: server a is down")
        assert read_job(isolated.sessions, backup.id).status == JobStatus.PENDING

        ServerRegistry(session, SYSTEM).set_status("a", ServerStatus.ACTIVE)
        session.commit()
        uow = UnitOfWork(session)
        JobRepairs(uow, dispatch=isolated.dispatcher.send_job).republish_pending(timedelta(minutes=5))
        uow.commit()
        done = finished(isolated, backup.id)
        assert done.status == JobStatus.COMPLETED and done.worker.startswith(servers["a"].worker.name)


def pinned(isolated, session, tenant, server: str):
    """A create of ``tenant`` on ``server``, sent there; its job id."""
    service = committing(session, dispatch=isolated.dispatcher.send_job)
    return service.request_job(tenant.id, JobType.CREATE_SITE, options={"server": server}).id
