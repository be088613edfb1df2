"""Placing a fleet's tenants: ``create_site`` requests through ``JobRequests.request_job`` (each
committed on its own, as the API commits a request), from one process or several at once, on a
fleet of simulated servers; and the checks that the fleet came out as placement promises."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from benchmarks.parts import Bench, percentile, seed_tenants
from provisioning.accounts.audit import Origin
from provisioning.enums import JobType
from provisioning.errors import Conflict
from provisioning.jobs.requests import JobRequests
from provisioning.platform.db import UnitOfWork, get_engine, new_session_factory
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from provisioning.servers.registry import ServerRegistry

ORIGIN = Origin(actor="fleet-bench")
# How often the lock sampler looks at what the benchmark's database connections are waiting for.
SAMPLE_SECONDS = 0.02


@dataclass(frozen=True)
class PlacementRun:
    """One run of placements and what the fleet looked like after it."""

    name: str
    tenants: int
    processes: int
    seconds: float
    p50_ms: float
    p99_ms: float
    conflicts: int
    lock_wait_share: float
    client_cpu_ms: float
    postgres_cpu_ms: float
    min_sites: int
    max_sites: int
    capacity: int
    over_capacity: int
    miscounted: int
    unaccounted: int  # tenants neither placed nor refused

    @property
    def per_second(self) -> float:
        """Requests answered a second, placed or refused."""
        return self.tenants / self.seconds


def make_fleet(stack: Bench, servers: int, capacity: int) -> list[str]:
    """``servers`` active servers named s01, s02...; the server the migration makes for a
    deployment of one is removed first, so the fleet is only these."""
    names = [f"s{n:02d}" for n in range(1, servers + 1)]
    with new_session_factory(stack.database_url)() as session:
        registry = ServerRegistry(session, ORIGIN)
        registry.remove(DEFAULT_SERVER_NAME)
        for name in names:
            registry.add(name, capacity=capacity)
        session.commit()
    return names


def placement_run(stack: Bench, name: str, tenants: int, processes: int, capacity: int) -> PlacementRun:
    """Seed ``tenants`` pending tenants and ask for each one's first create, shared among
    ``processes`` processes that all start at once; the row locks they wait on are sampled."""
    tenant_ids = [str(tenant) for tenant, _ in seed_tenants(stack, tenants)]
    sampler = LockSampler(stack.database_url)
    with sampler:
        placed = place_at_once(stack.database_url, tenant_ids, processes)
    fleet = fleet_check(stack)
    return PlacementRun(
        name, tenants, processes, placed.seconds, percentile(placed.latencies, 50), percentile(placed.latencies, 99),
        placed.conflicts, sampler.waiting_share, placed.client_cpu_ms, placed.postgres_cpu_ms, fleet["min_sites"],
        fleet["max_sites"], capacity, fleet["over_capacity"], fleet["miscounted"], fleet["unplaced"] - placed.conflicts,
    )  # fmt: skip


@dataclass(frozen=True)
class Placed:
    """What placing took: seconds from the go to the last placement, each request's milliseconds,
    the 409s, and the milliseconds of CPU a request cost the placing process and PostgreSQL."""

    seconds: float
    latencies: list[float]
    conflicts: int
    client_cpu_ms: float
    postgres_cpu_ms: float


def place_at_once(database_url: str, tenant_ids: list[str], processes: int) -> Placed:
    """Place the tenants from ``processes`` processes at once.

    Each process is spawned (never forked: a forked one would share the parent's pooled
    connections), connects, and waits for the go, so start-up is not timed.
    """
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    workers = [
        context.Process(target=_placer, args=(database_url, tenant_ids[n::processes], ready, go, results))
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=120)
        started = time.time()
        go.set()
        outcomes = [results.get(timeout=1800) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    latencies = [ms for share, *_ in outcomes for ms in share]
    cpu = tuple(1000 * sum(used[n] for *_, used in outcomes) / len(tenant_ids) for n in (0, 1))
    ended = max(ended for _, _, ended, _ in outcomes)
    return Placed(ended - started, latencies, sum(conflicts for _, conflicts, *_ in outcomes), *cpu)


def _placer(database_url: str, tenant_ids: list[str], ready, go, results) -> None:
    """One process's share: each tenant's create asked for and committed alone, as the API does;
    with the CPU seconds it and its PostgreSQL backend (one pooled connection, reused) spent."""
    sessions = new_session_factory(database_url)
    with sessions() as session:
        backend = session.execute(text("SELECT pg_backend_pid()")).scalar()  # connected before the clock starts
    ready.put(True)
    go.wait()
    cpu_before = (time.process_time(), cpu_seconds(backend))
    latencies, conflicts = [], 0
    for tenant_id in tenant_ids:
        asked = time.perf_counter()
        with sessions() as session:
            uow = UnitOfWork(session)
            try:
                JobRequests(uow, origin=ORIGIN).request_job(uuid.UUID(tenant_id), JobType.CREATE_SITE)
                uow.commit()
            except Conflict:
                conflicts += 1  # no server has room: the API's 409
        latencies.append((time.perf_counter() - asked) * 1000)
    cpu = (time.process_time() - cpu_before[0], cpu_seconds(backend) - cpu_before[1])
    results.put((latencies, conflicts, time.time(), cpu))


def cpu_seconds(pid: int) -> float:
    """The process's CPU seconds so far (user and system), from ``/proc``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    utime, stime = stat[stat.rindex(")") + 2 :].split()[11:13]
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


FLEET_CHECK = text("""
    SELECT min(site_count) AS min_sites, max(site_count) AS max_sites,
           count(*) FILTER (WHERE site_count > capacity) AS over_capacity,
           count(*) FILTER (WHERE site_count <> (SELECT count(*) FROM tenants WHERE server_id = servers.id)) AS miscounted,
           (SELECT count(*) FROM tenants WHERE server_id IS NULL) AS unplaced
    FROM servers
""")  # fmt: skip


def fleet_check(stack: Bench) -> dict[str, int]:
    """The fleet as placement left it: the fewest and most sites on a server, the servers over
    their capacity, those whose trigger-kept count differs from their tenants, the unplaced tenants."""
    with get_engine(stack.database_url).connect() as connection:
        return dict(connection.execute(FLEET_CHECK).mappings().one())


class LockSampler:
    """Samples, in a thread, how many of the database's busy connections wait on a lock (the
    server rows placement locks), and gives the share of busy samples that were waiting."""

    QUERY = text("""
        SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'), count(*) FILTER (WHERE state = 'active')
        FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
    """)  # fmt: skip

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.waiting = self.busy = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="lock-sampler", daemon=True)

    def __enter__(self) -> "LockSampler":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        with get_engine(self.database_url).connect() as connection:
            while not self._stop.wait(SAMPLE_SECONDS):
                waiting, busy = connection.execute(self.QUERY).one()
                connection.rollback()  # a fresh snapshot of pg_stat_activity each time
                self.waiting += waiting
                self.busy += busy

    @property
    def waiting_share(self) -> float:
        return self.waiting / self.busy if self.busy else 0.0
