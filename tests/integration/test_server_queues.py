"""A queue per bench server, with real workers: a job's message that reaches another server's worker
is sent on to its own server's queue, never run there; one of a server that is down is held until
the server is active again, then sent and run by that server's worker."""

from __future__ import annotations

from datetime import timedelta

from provisioning.accounts.audit import SYSTEM
from provisioning.enums import JobStatus, JobType, ServerStatus
from provisioning.messaging.broker import queue_depths
from provisioning.models import ProvisioningJob
from provisioning.servers.registry import ServerRegistry
from tests.fleet import simulated_site_on
from tests.helpers import committing, recording, wait_for
from tests.stack import WorkerProcess

# The servers these tests add: their queues are deleted after each test.
SERVER_NAMES = ("bench-b",)


def test_a_job_reaching_another_servers_worker_is_sent_on_or_held_and_runs_only_on_its_own(stack):
    settings, dispatcher = stack.settings, stack.dispatcher
    bench_b = settings.queue_of_server("bench-b")
    with stack.session() as session:
        registry = ServerRegistry(session, SYSTEM)
        registry.add("bench-b", 10)
        session.commit()
        moved, waiting = simulated_site_on(stack, session, "bench-b"), simulated_site_on(stack, session, "bench-b")
        # Jobs asked for and not sent (``recording``); their messages then reach the default
        # server's queue by mistake (a dead letter replayed, say).
        unsent = committing(session, dispatch=recording([]))
        stray = unsent.request_job(moved.id, JobType.BACKUP_SITE)
        held = unsent.request_job(waiting.id, JobType.BACKUP_SITE)

        def job(job_id) -> ProvisioningJob:
            session.expire_all()
            return session.get(ProvisioningJob, job_id)

        default_worker = WorkerProcess(stack.environment, dispatcher)
        try:
            dispatcher.send_job(stray.id, "default")
            wait_for(lambda: queue_depths(settings, ["bench-b"])[bench_b] == 1, timeout=20, what="the job sent on to bench-b")
            assert job(stray.id).status == JobStatus.PENDING and job(stray.id).started_at is None

            registry.set_status("bench-b", ServerStatus.DOWN)
            session.commit()
            dispatcher.send_job(held.id, "default")
            wait_for(lambda: job(held.id).message.startswith("Held: server bench-b is down"), timeout=20, what="the job held")
            assert job(held.id).status == JobStatus.PENDING and job(held.id).dispatched_at is None
            assert queue_depths(settings, ["bench-b"])[bench_b] == 1
        finally:
            default_worker.stop()
        assert "it runs on server bench-b, not default; sent to its queue" in default_worker.output()

        registry.set_status("bench-b", ServerStatus.ACTIVE)
        session.commit()
        assert committing(session, dispatch=dispatcher.send_job).republish_pending(timedelta(minutes=5)) == [held.id]
        bench_b_worker = WorkerProcess({**stack.environment, "SERVER_NAME": "bench-b"}, dispatcher)
        try:
            wait_for(
                lambda: {job(stray.id).status, job(held.id).status} == {JobStatus.COMPLETED},
                timeout=30,
                what="bench-b's worker to run both jobs",
            )
        finally:
            bench_b_worker.stop()
        assert all(job(job_id).worker.startswith(f"{bench_b_worker.name} ") for job_id in (stray.id, held.id))
