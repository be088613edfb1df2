"""move_site across bench servers on one machine: each with its own fake bench and worker (SERVER_NAME),
on PostgreSQL and RabbitMQ. Each step runs on the server it concerns; interrupted, the tenant is
served by exactly one server, nothing is lost, and the retry finishes the move."""

from __future__ import annotations

from sqlalchemy import select

from provisioning.enums import JobStatus, JobType, TenantStatus
from provisioning.models import JobEvent, Server
from provisioning.servers.placement import Placement
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


def events_of(isolated, job_id) -> list[tuple[str, str, str]]:
    with isolated.session() as session:
        rows = session.execute(
            select(JobEvent.kind, JobEvent.actor, JobEvent.detail).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def test_a_move_runs_each_step_on_its_server_and_leaves_the_site_on_the_new_one_alone(isolated, s3, tmp_path):
    with fleet(isolated, tmp_path, ("a", "b"), capacity=3, extra=s3.environment()) as servers, isolated.session() as session:
        tenant = TenantFactory(session).create()
        site_on(isolated, session, tenant, "a")
        slug = tenant.tenant.slug

        move = request(isolated, session, tenant, JobType.MOVE_SITE, server="b")
        assert move.options == {"server": "b", "from_server": "a"}
        # While it moves, the site takes room on both servers.
        counts = dict(session.execute(select(Server.name, Server.site_count).where(Server.name.in_(servers))).all())
        assert counts == {"a": 1, "b": 1}
        done = finished(isolated, move.id)

        assert done.status == JobStatus.COMPLETED, done.error
        assert servers["b"].holds(slug) and not servers["a"].holds(slug)
        assert read_tenant(isolated.sessions, tenant.id).status == TenantStatus.ACTIVE
        assert Placement(session).seat_of(tenant.id).name == "b"
        session.expire_all()
        counts = dict(session.execute(select(Server.name, Server.site_count).where(Server.name.in_(servers))).all())
        assert counts == {"a": 0, "b": 1}
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
