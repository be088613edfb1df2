"""Several bench servers on one machine for tests: each registered, with a fake bench directory of
its own and a real worker process started with its SERVER_NAME, on a test's own database and queues."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from kombu import Connection

from provisioning.accounts.audit import SYSTEM
from provisioning.enums import JobType, ServerStatus, TenantStatus
from provisioning.jobs.runner import JobRunner
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from provisioning.servers.registry import ServerRegistry
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.factories import TenantFactory
from tests.fake_bench import FAKE_BENCH, make_bench
from tests.helpers import committing
from tests.stack import RABBITMQ_URL, WorkerProcess

DOMAIN = "erp.example.test"
ROOT_PASSWORD = "Root-Secret-7f3a9"


@dataclass
class BenchServer:
    """One server of the fleet: its name, its bench and its worker."""

    name: str
    bench: Path
    environment: dict[str, str] = field(default_factory=dict)
    worker: WorkerProcess | None = None

    def site_dir(self, slug: str) -> Path:
        return self.bench / "sites" / f"{slug}.{DOMAIN}"

    def holds(self, slug: str) -> bool:
        return self.site_dir(slug).is_dir()

    def site_config(self, slug: str) -> dict:
        return json.loads((self.site_dir(slug) / "site_config.json").read_text())

    def start_worker(self, dispatcher, **changes: str) -> WorkerProcess:
        """A worker of this server (after its last one was stopped or killed), with settings changed
        (``FAKE_BENCH_HANG="backup"``: its bench hangs in every backup)."""
        self.worker = WorkerProcess({**self.environment, **changes}, dispatcher, concurrency=1)
        return self.worker


def simulated_site_on(stack, session, server: str):
    """A tenant whose site was created on ``server`` by the simulated driver, run in this process."""
    tenant = TenantFactory(session).create()
    job = committing(session).request_job(tenant.id, JobType.CREATE_SITE, options={"server": server})
    JobRunner.for_settings(stack.settings, stack.sessions, SimulatedDriver(0), "test-runner@localhost").run(job.id)
    session.refresh(tenant.tenant)
    assert tenant.tenant.status == TenantStatus.ACTIVE
    return tenant


def bench_environment(isolated, server_name: str, bench: Path, backups: Path) -> dict[str, str]:
    """A worker's settings for one server: its name, and its own fake bench and backup folder."""
    return {
        **isolated.environment,
        "SERVER_NAME": server_name,
        "SITE_DRIVER": "bench",
        "BENCH_PATH": str(bench),
        "BENCH_EXECUTABLE": str(FAKE_BENCH),
        "SITE_DOMAIN": DOMAIN,
        "DB_ROOT_PASSWORD": ROOT_PASSWORD,
        "FAKE_BENCH_DB_ROOT_PASSWORD": ROOT_PASSWORD,
        "BACKUP_PATH": str(backups),
        "JOB_HEARTBEAT_SECONDS": "0.5",
    }


@contextlib.contextmanager
def fleet(
    isolated,
    root: Path,
    names: tuple[str, ...],
    capacity: int = 2,
    extra: dict[str, str] | None = None,
    extra_of: dict[str, dict[str, str]] | None = None,
):
    """Register ``names`` as active servers (the default one drained: no worker serves it here),
    start a worker for each (with the settings ``extra``, and ``extra_of`` its name), and yield
    them by name; stop the workers and delete the servers' queues afterwards."""
    with isolated.session() as session:
        registry = ServerRegistry(session, SYSTEM)
        registry.set_status(DEFAULT_SERVER_NAME, ServerStatus.DRAINING)
        for name in names:
            registry.add(name, capacity)
        session.commit()
    servers = {name: BenchServer(name, make_bench(root / name / "bench")) for name in names}
    try:
        for server in servers.values():
            server.environment = {
                **bench_environment(isolated, server.name, server.bench, root / server.name / "backups"), **(extra or {})
            }
            server.start_worker(isolated.dispatcher, **(extra_of or {}).get(server.name, {}))
        yield servers
    finally:
        for server in servers.values():
            if server.worker is not None:
                server.worker.kill()
        with Connection(RABBITMQ_URL) as connection:
            for name in names:
                connection.default_channel.queue_delete(isolated.settings.queue_of_server(name))
