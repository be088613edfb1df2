"""move_site across bench servers on one machine: each with its own fake bench and worker (SERVER_NAME),
on PostgreSQL and RabbitMQ. Each step runs on the server it concerns; interrupted, the tenant is
served by exactly one server, nothing is lost, and the retry finishes the move."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from provisioning.accounts.audit import SYSTEM
from provisioning.enums import JobStatus, JobType, ServerStatus, StepStatus, TenantStatus
from provisioning.errors import Conflict
from provisioning.jobs.repairs import JobRepairs
from provisioning.models import JobEvent, Server
from provisioning.platform.db import UnitOfWork
from provisioning.servers.placement import Placement
from provisioning.servers.registry import ServerRegistry
from tests.factories import TenantFactory
from tests.fleet import fleet
from tests.helpers import committing, wait_for
from tests.records import read_job, read_steps, read_tenant


def finished(isolated, job_id, timeout: float = 60):
    def done():
        job = read_job(isolated.sessions, job_id)
        return job.status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED) and job

    return wait_for(done, timeout=timeout, what=f"job {job_id} to finish")


def request(isolated, session, tenant, job_type: JobType, **options):
    return committing(session, dispatch=isolated.dispatcher.send_job).request_job(tenant.id, job_type, options=options)


def site_on(isolated, session, tenant, server: str):
    """A tenant with an active site on ``server``."""
    job = request(isolated, session, tenant, JobType.CREATE_SITE, server=server)
    assert finished(isolated, job.id).status == JobStatus.COMPLETED


def site_counts(session, servers) -> dict[str, int]:
    session.expire_all()
    return dict(session.execute(select(Server.name, Server.site_count).where(Server.name.in_(servers))).all())


def moving(isolated, session, **options):
    """A tenant with a site on server a, and its move (to b, unless ``options`` say otherwise)."""
    tenant = TenantFactory(session).create()
    site_on(isolated, session, tenant, "a")
    return tenant, request(isolated, session, tenant, JobType.MOVE_SITE, **({"server": "b"} | options))


def in_step(isolated, job_id, step: str) -> None:
    """Wait until the job runs ``step``."""
    wait_for(
        lambda: any(row.name == step and row.status == StepStatus.RUNNING for row in read_steps(isolated.sessions, job_id)),
        timeout=30, what=f"job {job_id} to run {step}",
    )  # fmt: skip


def events_of(isolated, job_id) -> list[tuple[str, str, str]]:
    with isolated.session() as session:
        rows = session.execute(
            select(JobEvent.kind, JobEvent.actor, JobEvent.detail).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def test_a_move_runs_each_step_on_its_server_and_leaves_the_site_on_the_new_one_alone(isolated, s3, tmp_path):
    with (
        fleet(isolated, tmp_path, ("a", "b"), capacity=3, extra=s3.environment()) as servers,
        isolated.session() as session,
    ):
        tenant, move = moving(isolated, session)
        slug = tenant.tenant.slug
        assert move.options == {"server": "b", "from_server": "a"}
        # While it moves, the site takes room on both servers.
        assert site_counts(session, servers) == {"a": 1, "b": 1}
        done = finished(isolated, move.id)

        assert done.status == JobStatus.COMPLETED, done.error
        assert servers["b"].holds(slug) and not servers["a"].holds(slug)
        assert read_tenant(isolated.sessions, tenant.id).status == TenantStatus.ACTIVE
        assert Placement(session).seat_of(tenant.id).name == "b"
        assert site_counts(session, servers) == {"a": 0, "b": 1}
        handed = [(kind, actor, detail) for kind, actor, detail in events_of(isolated, move.id) if kind.endswith("_over")]
        assert [kind for kind, _, _ in handed] == ["handed_over", "taken_over", "handed_over", "taken_over"]
        assert handed[0][1].startswith(f"worker {servers['a'].worker.name}")
        assert "server b for step restore_target" in handed[0][2]
        assert handed[1][1].startswith(f"worker {servers['b'].worker.name}")
        assert "server a for step drop_source" in handed[2][2]
        # The new server restored the copy it fetched from offsite storage into its own BACKUP_PATH.
        restore = next(step for step in read_steps(isolated.sessions, move.id) if step.name == "restore_target")
        assert "restored the moved backup" in restore.output
        assert list((tmp_path / "b" / "backups" / slug / str(move.id)).iterdir())
        # The site's later jobs run on the new server.
        backup = request(isolated, session, tenant, JobType.BACKUP_SITE)
        assert finished(isolated, backup.id).worker.startswith(servers["b"].worker.name)


def reaped(isolated, job_id):
    """The job, once the sweeper's repair found its worker lost (its heartbeat stopped)."""

    def failed():
        with isolated.session() as session:
            JobRepairs(UnitOfWork(session)).reap_lost_jobs(timedelta(seconds=1))
            session.commit()
        job = read_job(isolated.sessions, job_id)
        return job.status == JobStatus.FAILED and job

    return wait_for(failed, timeout=30, what=f"job {job_id} to be failed as lost")


def retried(isolated, session, job_id):
    service = committing(session, dispatch=isolated.dispatcher.send_job)
    return service.retry_job(read_job(isolated.sessions, job_id).tenant_id, job_id)


def test_a_move_whose_old_servers_worker_is_killed_leaves_the_site_there_and_its_retry_finishes(
    isolated, s3, tmp_path
):
    hanging = {"a": {"FAKE_BENCH_HANG": "backup"}}
    with (
        fleet(isolated, tmp_path, ("a", "b"), extra=s3.environment(), extra_of=hanging) as servers,
        isolated.session() as session,
    ):
        tenant, move = moving(isolated, session)  # a create takes no backup: it does not hang
        slug = tenant.tenant.slug
        in_step(isolated, move.id, "move_backup")
        servers["a"].worker.kill()

        failed = reaped(isolated, move.id)
        assert "during step move_backup" in failed.error
        # Served by its old server alone: the new one holds nothing of it.
        assert Placement(session).seat_of(tenant.id).name == "a"
        assert servers["a"].holds(slug) and not servers["b"].holds(slug)
        assert read_tenant(isolated.sessions, tenant.id).status == TenantStatus.FAILED

        servers["a"].start_worker(isolated.dispatcher, FAKE_BENCH_HANG="")
        retry = retried(isolated, session, move.id)
        assert retry.resume_from == "move_backup"
        done = finished(isolated, retry.id)
        assert done.status == JobStatus.COMPLETED, done.error
        assert Placement(session).seat_of(tenant.id).name == "b"
        assert servers["b"].holds(slug) and not servers["a"].holds(slug)
        assert servers["b"].site_config(slug).get("maintenance_mode", 0) == 0


def test_a_move_whose_new_servers_worker_is_killed_in_the_restore_is_finished_there_by_its_retry(
    isolated, s3, tmp_path
):
    hanging = {"b": {"FAKE_BENCH_HANG": "restore"}}
    with (
        fleet(isolated, tmp_path, ("a", "b"), extra=s3.environment(), extra_of=hanging) as servers,
        isolated.session() as session,
    ):
        tenant, move = moving(isolated, session)
        slug = tenant.tenant.slug
        in_step(isolated, move.id, "restore_target")
        # Once its work went to the new server, a move cannot be cancelled: it finishes.
        refused = committing(session)
        with pytest.raises(Conflict, match="cannot be stopped once it hands its work to the new server"):
            refused.cancel_job(tenant.id, move.id)
        servers["b"].worker.kill()

        failed = reaped(isolated, move.id)
        assert "during step restore_target" in failed.error
        assert Placement(session).seat_of(tenant.id).name == "a"  # the switch never came
        assert servers["a"].site_config(slug)["maintenance_mode"] == 1  # closed, so nothing written is lost

        servers["b"].start_worker(isolated.dispatcher, FAKE_BENCH_HANG="")
        retry = retried(isolated, session, move.id)
        assert retry.resume_from == "restore_target"
        done = finished(isolated, retry.id)
        assert done.status == JobStatus.COMPLETED, done.error
        assert Placement(session).seat_of(tenant.id).name == "b"
        assert servers["b"].holds(slug) and not servers["a"].holds(slug)
        assert site_counts(session, servers) == {"a": 0, "b": 1}


def test_a_move_cancelled_before_it_leaves_its_server_opens_the_site_again_and_keeps_no_room_elsewhere(
    isolated, s3, tmp_path
):
    hanging = {"a": {"FAKE_BENCH_HANG": "backup"}}
    with (
        fleet(isolated, tmp_path, ("a", "b"), extra=s3.environment(), extra_of=hanging) as servers,
        isolated.session() as session,
    ):
        tenant, move = moving(isolated, session)
        slug = tenant.tenant.slug
        in_step(isolated, move.id, "move_backup")
        assert servers["a"].site_config(slug)["maintenance_mode"] == 1
        committing(session).cancel_job(tenant.id, move.id)

        done = finished(isolated, move.id)
        assert done.status == JobStatus.CANCELLED, done.error
        assert servers["a"].site_config(slug)["maintenance_mode"] == 0
        assert read_tenant(isolated.sessions, tenant.id).status == TenantStatus.ACTIVE
        assert Placement(session).seat_of(tenant.id).name == "a"
        assert site_counts(session, servers) == {"a": 1, "b": 0}


def test_a_drained_server_is_emptied_by_moving_its_sites_and_then_removed(isolated, s3, tmp_path):
    with (
        fleet(isolated, tmp_path, ("a", "b", "c"), capacity=2, extra=s3.environment()) as servers,
        isolated.session() as session,
    ):
        tenants = [TenantFactory(session).create() for _ in range(2)]
        for tenant in tenants:
            site_on(isolated, session, tenant, "a")
        registry = ServerRegistry(session, SYSTEM)
        registry.set_status("a", ServerStatus.DRAINING)
        session.commit()
        # No server named: each goes to the emptiest other active one, never back to the drained one.
        moves = [request(isolated, session, tenant, JobType.MOVE_SITE) for tenant in tenants]
        assert sorted(move.options["server"] for move in moves) == ["b", "c"]
        for move in moves:
            assert finished(isolated, move.id, timeout=90).status == JobStatus.COMPLETED

        assert not any(servers["a"].holds(tenant.tenant.slug) for tenant in tenants)
        registry.remove("a")
        session.commit()
        assert [server.name for server in registry.figures()] == ["b", "c", "default"]


def test_a_move_handed_to_a_server_that_is_down_waits_held_and_goes_on_once_it_is_active(isolated, tmp_path):
    # The simulated driver's steps take a second each: the server goes down well before the hand-over.
    simulated = {"SITE_DRIVER": "simulated", "SIMULATED_STEP_SECONDS": "1", "BACKUP_PATH": str(tmp_path / "backups")}
    with fleet(isolated, tmp_path, ("a", "b"), extra=simulated) as servers, isolated.session() as session:
        tenant, move = moving(isolated, session)
        registry = ServerRegistry(session, SYSTEM)
        registry.set_status("b", ServerStatus.DOWN)
        session.commit()

        def held():
            job = read_job(isolated.sessions, move.id)
            return job.message.startswith("Held: server b is down") and job

        waiting = wait_for(held, timeout=30, what="the move to wait, held, for server b")
        assert (waiting.status, waiting.worker, waiting.handed_to) == (JobStatus.RUNNING, None, "b")
        assert Placement(session).seat_of(tenant.id).name == "a"

        registry.set_status("b", ServerStatus.ACTIVE)
        session.commit()
        uow = UnitOfWork(session)
        assert move.id in JobRepairs(uow, dispatch=isolated.dispatcher.send_job).republish_pending(timedelta(minutes=5))
        uow.commit()
        done = finished(isolated, move.id)
        assert done.status == JobStatus.COMPLETED, done.error
        assert Placement(session).seat_of(tenant.id).name == "b"
        assert site_counts(session, servers) == {"a": 0, "b": 1}
