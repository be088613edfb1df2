"""A mixed job load (create, backup, delete; zero-second simulated steps) through real Celery
workers of several servers, one worker process per server, each on its own queue: how many
jobs each server and the whole fleet finish a second, how deep the queues get, and which
process's CPU runs out first."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sqlalchemy import NullPool, create_engine, text

from benchmarks.parts import RABBITMQ_PROCESSES, Bench, seed_tenants
from benchmarks.placing import ORIGIN
from provisioning.enums import JobType, TenantStatus
from provisioning.jobs.requests import JobRequests
from provisioning.messaging.broker import Dispatcher, queue_depths
from provisioning.platform.db import UnitOfWork, get_engine, new_session_factory
from provisioning.platform.settings import load_settings
from tests.stack import RUN_ID, SweeperProcess, WorkerProcess, delete_queues

# Each server's share of a round, in this order, over and over: a third of each kind.
MIX = (JobType.CREATE_SITE, JobType.BACKUP_SITE, JobType.DELETE_SITE)
TENANT_STATE_FOR = {JobType.CREATE_SITE: TenantStatus.PENDING, JobType.BACKUP_SITE: TenantStatus.ACTIVE,
                    JobType.DELETE_SITE: TenantStatus.ACTIVE}  # fmt: skip
POLL_SECONDS = 0.25
CORES = os.cpu_count() or 1


@dataclass
class JobRound:
    """One round's figures (or several rounds' of one size, pooled): the jobs, how long the whole
    round and each server took, the deepest each queue got, PostgreSQL's transactions, and the
    CPU seconds each part of the machine used over ``wall`` seconds (the round and its reading)."""

    servers: list[str]
    concurrency: int
    jobs: int
    seconds: float
    publish_seconds: float
    server_seconds: dict[str, float]
    failed: int
    max_depths: dict[str, int]
    transactions: int
    wall: float
    cpu: dict[str, float]
    others: dict[str, float]
    turns: list[float] = field(default_factory=list)  # each turn's jobs/s, once pooled

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds

    @property
    def per_server(self) -> dict[str, float]:
        """Each server's jobs a second: its share of the jobs over the time until its last finished."""
        return {server: self.jobs / len(self.servers) / seconds for server, seconds in self.server_seconds.items()}

    @property
    def cores(self) -> dict[str, float]:
        return {name: seconds / self.wall for name, seconds in self.cpu.items()}

    @property
    def busiest(self) -> tuple[str, float]:
        """The single process that kept a core busiest (the parts summed over several processes
        are not candidates: a part of many processes is limited by the machine, not a core)."""
        return max(((name, cores) for name, cores in self.cores.items() if name.startswith("process ")),
                   key=lambda item: item[1])  # fmt: skip

    def cpu_per_job(self, *prefixes: str) -> float:
        """Milliseconds of CPU a job cost the parts whose names start with one of ``prefixes``."""
        return 1000 * sum(seconds for name, seconds in self.cpu.items() if name.startswith(prefixes)) / self.jobs


def pooled(rounds: list[JobRound]) -> JobRound:
    """Several turns of one size as one: their jobs over their time, their CPU over their time,
    the deepest queues of any; each turn's rate kept in ``turns``."""
    cpu: Counter[str] = Counter()
    others: Counter[str] = Counter()
    for round_ in rounds:
        cpu.update(round_.cpu)
        others.update({name: cores * round_.wall for name, cores in round_.others.items()})
    wall = sum(round_.wall for round_ in rounds)
    first = rounds[0]
    return JobRound(
        first.servers, first.concurrency, sum(round_.jobs for round_ in rounds), sum(round_.seconds for round_ in rounds),
        sum(round_.publish_seconds for round_ in rounds),
        {server: sum(round_.server_seconds[server] for round_ in rounds) for server in first.servers},
        sum(round_.failed for round_ in rounds),
        {queue: max(round_.max_depths.get(queue, 0) for round_ in rounds) for queue in first.max_depths},
        sum(round_.transactions for round_ in rounds), wall, dict(cpu),
        {name: seconds / wall for name, seconds in others.most_common(3)}, [round_.per_second for round_ in rounds],
    )  # fmt: skip


def job_round(stack: Bench, servers: list[str], jobs_per_server: int, concurrency: int) -> JobRound:
    """Request ``jobs_per_server`` jobs for each server's tenants, start a worker per server (and
    the sweeper, whose relay announces the jobs' events), publish them all at once, and wait
    until every one has finished."""
    jobs = request_mixed_jobs(stack, servers, jobs_per_server)
    dispatcher = Dispatcher(load_settings(stack.environment))
    with ExitStack() as running:
        # The sweeper first: its start-up is over by the time the workers answer, and not metered.
        sweeper = SweeperProcess(stack.environment, stack.directory)
        running.callback(sweeper.stop)
        workers = [running.enter_context(_worker(stack, dispatcher, server, concurrency)) for server in servers]
        meter = Meter(stack, servers, [worker.process.pid for worker in workers], sweeper.group.process.pid)
        started = time.time()
        for job_id, server in jobs:
            dispatcher.send_job(job_id, server)
        published = time.time()
        meter.watch_until_done()
        meter.read_cpu()
    finished = _finished(stack, [job_id for job_id, _ in jobs])
    last = {server: max(finished[job_id][1] for job_id, s in jobs if s == server) for server in servers}
    return JobRound(
        servers, concurrency, len(jobs), max(last.values()) - started, published - started,
        {server: ended - started for server, ended in last.items()},
        sum(1 for status, _ in finished.values() if status != "completed"),
        dict(meter.max_depths), meter.transactions(), meter.wall, meter.cpu, meter.others,
    )  # fmt: skip


def request_mixed_jobs(stack: Bench, servers: list[str], jobs_per_server: int) -> list[tuple[uuid.UUID, str]]:
    """For each server, tenants in the state each job of the mix needs, placed on it (as
    migration 0012 places a deployment's sites: the placement runs measure placing); then each
    job asked for through ``JobRequests.request_job``, committed alone as the API does, in turns
    across servers and kinds. Returns ``(job id, server)`` in that order, all marked as sent: the
    benchmark publishes them itself, and no sweep may publish them a second time."""
    wanted = [(server, MIX[n % len(MIX)]) for n in range(jobs_per_server) for server in servers]
    tenants: dict[tuple[str, JobType], list[uuid.UUID]] = {}
    for (server, job_type), count in Counter(wanted).items():
        made = [tenant for tenant, _ in seed_tenants(stack, count, TENANT_STATE_FOR[job_type])]
        stack.execute("UPDATE tenants SET server_id = (SELECT id FROM servers WHERE name = :server) WHERE id = ANY(:ids)",
                      server=server, ids=made)  # fmt: skip
        tenants[(server, job_type)] = made
    sessions = new_session_factory(stack.database_url)
    jobs = []
    for server, job_type in wanted:
        with sessions() as session:
            uow = UnitOfWork(session)
            job = JobRequests(uow, origin=ORIGIN).request_job(tenants[(server, job_type)].pop(), job_type)
            uow.commit()
        jobs.append((job.id, server))
    stack.execute("UPDATE provisioning_jobs SET dispatched_at = now(), dispatch_count = 1 WHERE status = 'pending'")
    # Closed, so their backends' transaction counts reach pg_stat_database before the round counts its own.
    get_engine(stack.database_url).dispose()
    return jobs


@contextmanager
def _worker(stack: Bench, dispatcher: Dispatcher, server: str, concurrency: int) -> Iterator[WorkerProcess]:
    """The worker of one server (``SERVER_NAME``; it takes jobs from that server's queue only),
    stopped with a SIGTERM to its prefork parent when the round ends; its log is kept only when
    the round failed."""
    environment = {**stack.environment, "SERVER_NAME": server}
    worker = WorkerProcess(environment, dispatcher, concurrency=concurrency, name=f"fleet-{RUN_ID}-{server}@localhost")
    try:
        yield worker
    finally:
        worker.stop()
    worker.group.log_path.unlink()


def _finished(stack: Bench, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, float]]:
    """Each job's status and when it finished (seconds since the epoch)."""
    with get_engine(stack.database_url).connect() as connection:
        rows = connection.execute(
            text("SELECT id, status, extract(epoch FROM completed_at) FROM provisioning_jobs WHERE id = ANY(:ids)"),
            {"ids": job_ids},
        )
        return {job_id: (status, float(ended)) for job_id, status, ended in rows}


class Meter:
    """What a round costs and shows: the queue depths it sees while it waits, PostgreSQL's
    transactions, and the CPU of every process that matters, each from ``/proc``."""

    def __init__(self, stack: Bench, servers: list[str], worker_pids: list[int], sweeper_pid: int):
        self.stack = stack
        self.settings = load_settings(stack.environment)
        self.servers = servers
        self.groups = {f"worker {server}": pid for server, pid in zip(servers, worker_pids)} | {"sweeper": sweeper_pid}
        # Polled on connections of their own, closed at once: a poll ends in a rollback (it commits
        # nothing, so it is not counted), and no count is left unreported in a pooled connection.
        self.engine = create_engine(stack.database_url, poolclass=NullPool)
        self.max_depths: Counter[str] = Counter()
        self.wall = 0.0
        self.cpu: dict[str, float] = {}
        self.others: dict[str, float] = {}  # cores kept busy by other users' processes, by name
        self.commits_before = self._commits()
        self.cpu_before, self.machine_before, self.started = process_cpu(), machine_busy(), time.monotonic()

    def watch_until_done(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while self._active():
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs still active after {timeout}s")
            for queue, depth in queue_depths(self.settings, self.servers).items():
                self.max_depths[queue] = max(self.max_depths[queue], depth or 0)
            time.sleep(POLL_SECONDS)

    def _active(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(
                text("SELECT count(*) FROM provisioning_jobs WHERE status IN ('pending', 'running', 'cancelling')")
            ).scalar()

    def _commits(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(
                text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            ).scalar()

    def read_cpu(self) -> None:
        """The CPU seconds each part used since the meter was made, over ``wall`` seconds:
        each worker's parent and its pool processes, the sweeper, this benchmark (the
        publisher), PostgreSQL's backends of this database and the rest of PostgreSQL, RabbitMQ,
        and whatever else ran on the machine (other users' work, on a shared machine; the
        busiest of it by command name in ``others``)."""
        after = process_cpu()
        used = {pid: seconds - self.cpu_before.get(pid, (name, 0.0))[1] for pid, (name, seconds) in after.items()}
        ours = self._database_backends()
        parts = self._our_parts(used, ours)
        others: Counter[str] = Counter()
        for pid, seconds in used.items():
            name = after[pid][0]
            if name == "postgres":
                parts["postgres rest"] += seconds
            elif name in RABBITMQ_PROCESSES:
                parts["rabbitmq"] += seconds
            else:
                others[name] += seconds
        machine = machine_busy() - self.machine_before
        counted = sum(seconds for name, seconds in parts.items() if name != "process postgres backend (busiest)")
        parts["others"] = max(0.0, machine - counted)
        parts["machine"] = machine
        self.wall = time.monotonic() - self.started
        self.cpu = dict(parts)
        self.others = {name: seconds / self.wall for name, seconds in others.most_common(3)}

    def _our_parts(self, used: dict[int, float], backends: list[int]) -> Counter[str]:
        """The CPU seconds of the processes the round started or serves, each taken out of ``used``."""
        parts: Counter[str] = Counter()
        for label, pid in self.groups.items():
            if label == "sweeper":
                parts["sweeper"] += sum(used.pop(each, 0.0) for each in [pid, *descendants(pid)])
                continue
            parts[f"process {label} parent"] += used.pop(pid, 0.0)
            for number, child in enumerate(descendants(pid), 1):
                parts[f"process {label} pool {number}"] += used.pop(child, 0.0)
        parts["process publisher (this benchmark)"] += used.pop(os.getpid(), 0.0)
        by_backend = [used.pop(pid, 0.0) for pid in backends]
        parts["postgres ours"] += sum(by_backend)
        parts["process postgres backend (busiest)"] = max(by_backend, default=0.0)
        return parts

    def _database_backends(self) -> list[int]:
        """This database's PostgreSQL backends, read while the workers still hold their connections."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            )
            return [pid for (pid,) in rows]

    def transactions(self) -> int:
        """The transactions the round committed (the workers' and the sweeper's): read once the
        workers have stopped, when their backends have reported them."""
        time.sleep(1)
        return self._commits() - self.commits_before


def process_cpu() -> dict[int, tuple[str, float]]:
    """Every live process's command name and CPU seconds so far (user and system)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        utime, stime = stat[stat.rindex(")") + 2 :].split()[11:13]
        found[int(entry.name)] = (name, (int(utime) + int(stime)) / ticks)
    return found


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (neither idle nor waiting for the disk)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = values[3], values[4]
    return (sum(values[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """The process's children, their children, and so on."""
    found = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def delete_server_queues(stack: Bench, servers: list[str]) -> None:
    """Each server's queue (the deployment's own queue, its dead-letter queue and events exchange
    go with the benchmark's ``bench``)."""
    settings = load_settings(stack.environment)
    for server in servers:
        delete_queues(settings.queue_of_server(server))
