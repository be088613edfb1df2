"""A move across two servers while RabbitMQ is stopped and started again, as it hands the job from
one server's worker to the other's: the tenant is served by one server throughout, and the move
ends on the new one (by itself, or by its retry if the hand-over's message was lost with the
broker). The broker stopped is a node of the test's own (``tests.rabbitmq_node``), never the machine's."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from provisioning.enums import JobStatus, JobType, TenantStatus
from provisioning.messaging.broker import Dispatcher
from provisioning.models import JobEvent, Server
from provisioning.platform.db import utcnow
from provisioning.servers.placement import Placement
from tests.factories import TenantFactory
from tests.fleet import fleet
from tests.helpers import committing, wait_for
from tests.integration.test_moves import finished, reaped
from tests.rabbitmq_node import RabbitMQNode
from tests.records import read_job, read_tenant

pytestmark = pytest.mark.disruptive  # stops and starts a RabbitMQ node of its own

FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
SLOW_STEPS = {"SITE_DRIVER": "simulated", "SIMULATED_STEP_SECONDS": "0.5", "LOST_JOB_AFTER_SECONDS": "5"}


@pytest.fixture
def broker():
    node = RabbitMQNode()
    try:
        yield node
    finally:
        node.stop()


def test_a_move_across_a_broker_restart_at_its_hand_over_ends_on_the_new_server_alone(isolated, broker, tmp_path):
    dispatcher = Dispatcher(isolated.settings.model_copy(update={"broker_url": broker.url}))
    on_node = type(isolated)(
        {**isolated.environment, "RABBITMQ_URL": broker.url}, isolated.settings, dispatcher, isolated.sessions
    )
    # One backup folder for both: the simulated servers are on one machine, and offsite copies are off.
    shared = {**SLOW_STEPS, "BACKUP_PATH": str(tmp_path / "backups")}
    with fleet(on_node, tmp_path, ("a", "b"), extra=shared), isolated.session() as session:
        service = committing(session, dispatch=dispatcher.send_job)
        tenant = TenantFactory(session).create()
        assert finished(isolated, service.request_job(tenant.id, JobType.CREATE_SITE, options={"server": "a"}).id).status == (
            JobStatus.COMPLETED
        )
        move = service.request_job(tenant.id, JobType.MOVE_SITE, options={"server": "b"})

        def handed_over():
            with isolated.session() as fresh:
                return fresh.scalar(select(JobEvent.id).where(JobEvent.job_id == move.id, JobEvent.kind == "handed_over"))

        wait_for(handed_over, timeout=60, what="the move to be handed to server b")
        broker.stop_app()
        assert Placement(session).seat_of(tenant.id).name == "a"  # the switch is b's worker's, later
        broker.start_app()

        def settled():
            job = read_job(isolated.sessions, move.id)
            stranded = job.worker is None and job.heartbeat_at < utcnow() - timedelta(seconds=5)
            return (job.status in FINAL or stranded) and job

        ended = wait_for(settled, timeout=90, what="the move to end, or to wait for a worker that will never come")
        if ended.status not in FINAL:  # the hand-over's message was lost with the broker: the sweeper's repair
            ended = reaped(isolated, move.id)
            assert "no worker of server b took over the job handed to it" in ended.error, ended.error
        if ended.status == JobStatus.FAILED:  # and the retry resumes where it was
            ended = finished(isolated, service.retry_job(tenant.id, move.id).id, timeout=90)
        assert ended.status == JobStatus.COMPLETED, ended.error
        assert Placement(session).seat_of(tenant.id).name == "b"
        assert read_tenant(isolated.sessions, tenant.id).status == TenantStatus.ACTIVE
        session.expire_all()
        counts = dict(session.execute(select(Server.name, Server.site_count).where(Server.name.in_(("a", "b")))).all())
        assert counts == {"a": 0, "b": 1}
