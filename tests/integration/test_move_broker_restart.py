"""A move across two servers while RabbitMQ is stopped and started again, as it hands the job from
one server's worker to the other's: the move ends on the new server alone, with no retry (a
hand-over whose message the broker did not take is sent again by the sweeper). The broker stopped
is a node of the test's own (``tests.rabbitmq_node``), never the machine's."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from provisioning.enums import JobStatus, JobType, TenantStatus
from provisioning.messaging.broker import Dispatcher
from provisioning.models import JobEvent, Server
from provisioning.servers.placement import Placement
from tests.factories import TenantFactory
from tests.fleet import fleet
from tests.helpers import committing, wait_for
from tests.integration.test_moves import finished
from tests.records import read_tenant
from tests.stack import SweeperProcess

pytestmark = pytest.mark.disruptive  # stops and starts a RabbitMQ node of its own

SLOW_STEPS = {
    "SITE_DRIVER": "simulated", "SIMULATED_STEP_SECONDS": "0.5", "LOST_JOB_AFTER_SECONDS": "5",
    "SWEEP_INTERVAL_SECONDS": "1", "UNCLAIMED_JOB_AFTER_SECONDS": "3",
}  # fmt: skip


def test_a_move_across_a_broker_restart_at_its_hand_over_ends_on_the_new_server_alone(isolated, broker, tmp_path):
    dispatcher = Dispatcher(isolated.settings.model_copy(update={"broker_url": broker.url}))
    on_node = type(isolated)(
        {**isolated.environment, "RABBITMQ_URL": broker.url}, isolated.settings, dispatcher, isolated.sessions
    )
    # One backup folder for both: the simulated servers are on one machine, and offsite copies are off.
    shared = {**SLOW_STEPS, "BACKUP_PATH": str(tmp_path / "backups")}
    # The sweeper sends again what the broker did not take; it names no server: it serves them all.
    sweeper = SweeperProcess({**on_node.environment, **SLOW_STEPS}, tmp_path)
    try:
        with fleet(on_node, tmp_path, ("a", "b"), extra=shared), isolated.session() as session:
            moved_across_a_restart(isolated, broker, dispatcher, session)
    finally:
        sweeper.stop()


def moved_across_a_restart(isolated, broker, dispatcher, session) -> None:
    service = committing(session, dispatch=dispatcher.send_job)
    tenant = TenantFactory(session).create()
    created = service.request_job(tenant.id, JobType.CREATE_SITE, options={"server": "a"})
    assert finished(isolated, created.id).status == JobStatus.COMPLETED
    move = service.request_job(tenant.id, JobType.MOVE_SITE, options={"server": "b"})

    def handed_over():
        with isolated.session() as fresh:
            return fresh.scalar(select(JobEvent.id).where(JobEvent.job_id == move.id, JobEvent.kind == "handed_over"))

    wait_for(handed_over, timeout=60, what="the move to be handed to server b")
    broker.stop_app()
    broker.start_app()

    ended = finished(isolated, move.id, timeout=90)
    assert ended.status == JobStatus.COMPLETED, ended.error
    assert ended.retry_of_id is None
    assert Placement(session).seat_of(tenant.id).name == "b"
    assert read_tenant(isolated.sessions, tenant.id).status == TenantStatus.ACTIVE
    counts = dict(session.execute(select(Server.name, Server.site_count).where(Server.name.in_(("a", "b")))).all())
    assert counts == {"a": 0, "b": 1}
