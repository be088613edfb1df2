"""``python -m benchmarks.at_scale``: the figures the README's estimate for 1,000 servers and 100,000
sites rests on that the fleet benchmark does not give: what a queue and a connection cost RabbitMQ,
and what the sweeper's due-backup query costs on 100,000 active tenants. Everything it makes (its
queues, connections and database) is removed again; it needs ``rabbitmqctl`` on this machine."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import timedelta

from kombu import Connection
from sqlalchemy import create_engine, select, text

import celeryconfig
from provisioning.enums import JobStatus, JobType, TenantStatus
from provisioning.models import ProvisioningJob, Tenant
from provisioning.operations.schedules import _has_job
from provisioning.platform.db import utcnow
from provisioning.platform.settings import load_settings
from tests.stack import RABBITMQ_URL, migrated_database

QUEUES = 1_000
CONNECTIONS = 200
TENANTS = 100_000


def broker_memory(prefix: str) -> int:
    """RabbitMQ's memory, in bytes, of the kinds whose names start with ``prefix``."""
    status = subprocess.run(["rabbitmqctl", "status", "--formatter", "json"], capture_output=True, text=True, check=True)
    return sum(value for name, value in json.loads(status.stdout)["memory"].items() if name.startswith(prefix))


def queue_costs() -> dict:
    """Declare as many job queues as a fleet of ``QUEUES`` servers has, as ours are declared."""
    settings = load_settings({"RABBITMQ_URL": RABBITMQ_URL, "DATABASE_URL": "sqlite://"})
    names = [f"bench-at-scale-{uuid.uuid4().hex[:6]}.{number}" for number in range(QUEUES)]
    before = broker_memory("queue_procs")
    with Connection(RABBITMQ_URL) as connection:
        channel = connection.channel()
        started = time.perf_counter()
        for name in names:
            celeryconfig.job_queue(name, settings)(channel).declare()
        declared = time.perf_counter() - started
        time.sleep(2)  # the broker's memory figures lag
        memory = broker_memory("queue_procs") - before
        started = time.perf_counter()
        for name in names:
            channel.queue_declare(name, passive=True)
        passive = time.perf_counter() - started
        for name in names:
            channel.queue_delete(name)
    return {"queue_bytes": memory / QUEUES, "declare_ms": 1000 * declared / QUEUES, "passive_declare_ms": 1000 * passive / QUEUES}


def connection_cost() -> dict:
    before = broker_memory("connection_")
    connections = [Connection(RABBITMQ_URL) for _ in range(CONNECTIONS)]
    for connection in connections:
        connection.connect()
        connection.channel()
    time.sleep(2)
    memory = broker_memory("connection_") - before
    for connection in connections:
        connection.release()
    return {"connection_bytes": memory / CONNECTIONS}


def sweep_cost() -> dict:
    """The sweeper's question "which active tenants are due a backup" on ``TENANTS`` of them, each
    with a backup job of the last 48 hours."""
    with migrated_database(f"bench_at_scale_{uuid.uuid4().hex[:6]}") as url:
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO tenants (id, slug, name, status, job_count, created_at, updated_at) "
                f"SELECT gen_random_uuid(), 't' || n, 'T' || n, 'active', 0, now(), now() FROM generate_series(1, {TENANTS}) n"
            ))
            connection.execute(text(
                "INSERT INTO provisioning_jobs (id, tenant_id, job_type, status, progress, message, options, dispatch_count, "
                "created_at, completed_at) SELECT gen_random_uuid(), id, 'backup_site', 'completed', 100, '', '{}', 1, "
                "now() - random() * interval '48 hours', now() FROM tenants"
            ))
            connection.execute(text("ANALYZE"))
        since = utcnow() - timedelta(hours=24)
        due = select(Tenant.id).where(
            Tenant.status == TenantStatus.ACTIVE,
            ~_has_job(JobType.BACKUP_SITE, ProvisioningJob.created_at >= since),
            ~_has_job(JobType.CREATE_SITE, ProvisioningJob.status == JobStatus.COMPLETED, ProvisioningJob.completed_at >= since),
        )
        with engine.connect() as connection:
            connection.execute(due).all()  # warm
            started = time.perf_counter()
            found = len(connection.execute(due).all())
            took = time.perf_counter() - started
        engine.dispose()
    return {"due_query_ms": 1000 * took, "due": found, "tenants": TENANTS}


def main() -> None:
    figures = {**queue_costs(), **connection_cost(), **sweep_cost()}
    print(f"{QUEUES:,} job queues: {figures['queue_bytes'] / 1024:.0f} KiB of queue memory each, "
          f"declared in {figures['declare_ms']:.1f} ms each, a passive declare {figures['passive_declare_ms']:.2f} ms")
    print(f"a connection with one channel: {figures['connection_bytes'] / 1024:.0f} KiB")
    print(f"the sweeper's due-backup query on {TENANTS:,} active tenants: {figures['due_query_ms']:.0f} ms "
          f"({figures['due']:,} due)")  # fmt: skip


if __name__ == "__main__":
    main()
