"""``python -m benchmarks.webhooks`` (``make bench-webhooks``): how soon a portal hears that a site is ready.

``--tenants`` tenants each register a webhook for ``job.completed`` (through the API, to a
receiver on loopback) and ask for ``create_site`` at once; a real worker (two processes, the
simulated driver with 0 s steps) runs the jobs and the sweeper (the Procfile's line) sends the
webhooks. Each job is timed from its ``completed_at`` to the receiver's arrival of its signed
``job.completed``; beside it, the baseline: the same job's announcement on the events exchange
(the relay the sweeper also runs, to a queue bound as billing's would be), which the webhooks
share their outbox transaction with. Also printed: how many deliveries a second the burst got.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

from kombu import Connection, Queue
from sqlalchemy import select

from api import create_app
from benchmarks.parts import bench
from celeryconfig import events_exchange
from provisioning.enums import Role
from provisioning.messaging.broker import Dispatcher
from provisioning.models import ProvisioningJob
from provisioning.platform.db import session_factory
from provisioning.platform.settings import Settings, load_settings
from tests.factories import TenantFactory
from tests.helpers import wait_for
from tests.stack import SweeperProcess, WorkerProcess
from tests.webhook_receiver import WebhookReceiver

JOBS = "/api/v1/provisioning/jobs"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.webhooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--tenants", type=int, default=200, help="tenants, each one create and one webhook (default 200)")
    args = parser.parse_args()
    receiver = WebhookReceiver()
    with bench(f"webhooks-{uuid.uuid4().hex[:6]}") as made:
        environment = {**made.environment, "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}
        settings = load_settings(environment)
        sessions = session_factory(settings.database_url)
        client = create_app(settings).test_client()
        tenants = []
        with sessions() as session:
            for _ in range(args.tenants):
                tenant = TenantFactory(session).create(roles=(Role.OWNER,))
                answer = client.post("/api/v1/webhooks", json={"url": receiver.url, "event_types": ["job.completed"]},
                                     headers=tenant.headers())  # fmt: skip
                assert answer.status_code == 201, answer.json
                tenants.append(tenant)
        worker = WorkerProcess(environment, Dispatcher(settings), concurrency=2)
        sweeper = SweeperProcess(environment, made.directory)
        announcements = Announcements(settings)
        try:
            started = time.time()
            for tenant in tenants:
                assert client.post(JOBS, json={"job_type": "create_site"}, headers=tenant.headers()).status_code == 201
            wait_for(lambda: len(receiver.received()) >= args.tenants, timeout=300, interval=0.1, what="every webhook")
            last_arrival = time.time()
            wait_for(lambda: len(announcements.completed) >= args.tenants, timeout=60, what="every announcement")
        finally:
            announcements.stop()
            sweeper.stop()
            worker.stop()
            receiver.close()
        with sessions() as session:
            finished = select(ProvisioningJob.id, ProvisioningJob.completed_at).where(ProvisioningJob.completed_at.is_not(None))
            completed = {job_id: at.timestamp() for job_id, at in session.execute(finished)}
    webhook = [received.at - completed[uuid.UUID(received.event["data"]["job_id"])] for received in receiver.received()]
    announced = [at - completed[uuid.UUID(job_id)] for job_id, at in announcements.completed]
    print(table(webhook, announced, args.tenants / (last_arrival - started)))
    return 0


def table(webhook: list[float], announced: list[float], per_second: float) -> str:
    def row(name: str, seconds: list[float]) -> str:
        ordered = sorted(seconds)
        p95 = ordered[int(0.95 * (len(ordered) - 1))]
        return f"| {name} | {len(ordered)} | {statistics.median(ordered):.2f} | {p95:.2f} | {ordered[-1]:.2f} |"

    return "\n".join([
        "| from a job's completed_at to | n | p50 (s) | p95 (s) | max (s) |",
        "|---|---|---|---|---|",
        row("its signed job.completed at the receiver (webhook)", webhook),
        row("its announcement on the events exchange (baseline)", announced),
        f"\nthe burst: {per_second:.1f} creates a second, requested to the last webhook received",
    ])  # fmt: skip


class Announcements:
    """The events exchange's ``job.completed`` announcements, each with when it arrived, heard by a
    thread of its own on a queue bound as billing's would be."""

    def __init__(self, settings: Settings):
        self.completed: list[tuple[str, float]] = []
        self._stopped = threading.Event()
        queue = Queue(f"bench-{uuid.uuid4().hex[:6]}", exchange=events_exchange(settings), routing_key="job.completed",
                      exclusive=True)  # fmt: skip
        self._connection = Connection(settings.broker_url)
        self._queue = self._connection.SimpleQueue(queue)
        self._thread = threading.Thread(target=self._hear, daemon=True)
        self._thread.start()

    def _hear(self) -> None:
        while not self._stopped.is_set():
            try:
                message = self._queue.get(timeout=0.2)
            except self._queue.Empty:
                continue
            self.completed.append((message.payload["job_id"], time.time()))
            message.ack()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._queue.close()
        self._connection.release()


if __name__ == "__main__":
    raise SystemExit(main())
