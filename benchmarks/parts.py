"""The running parts a benchmark needs: a seeded database, gunicorn, Celery workers, wrk, RSS."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from sqlalchemy import insert, text, update

from provisioning.accounts.registry import TOKEN_PREFIX
from provisioning.enums import JobStatus, JobType, Role, TenantStatus
from provisioning.models import ApiToken, Membership, ProvisioningJob, Server, Tenant, User
from provisioning.platform.db import get_engine, utcnow
from provisioning.servers.registry import MAX_CAPACITY
from tests.helpers import wait_for
from tests.processes import GroupProcess, free_port, procfile_commands
from tests.stack import RABBITMQ_URL, RUN_ID, delete_queues, migrated_database, process_environment

WRK_SCRIPT = Path(__file__).with_name("post_jobs.lua")
CHUNK = 5000


@dataclass
class Bench:
    """One benchmark's database and queue, and the environment its processes run with."""

    database_url: str
    queue: str
    directory: Path

    @property
    def environment(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "RABBITMQ_URL": RABBITMQ_URL,
            "PROVISIONING_QUEUE_NAME": self.queue,
            "SIMULATED_STEP_SECONDS": "0",
            "SITE_CREDENTIALS_KEY": "0" * 43 + "=",
            "BACKUP_PATH": str(self.directory / "backups"),
            "BACKUP_INTERVAL_HOURS": "0",
            "LOG_LEVEL": "warning",  # a line per step would measure the disk, not the service
            # wrk sends one token's requests far faster than a client may: the limits are still
            # checked on every request (api/limits.py), but never reached.
            "RATE_LIMIT_PER_TOKEN": "1000000000/minute",
            "RATE_LIMIT_CREATES": "1000000000/minute",
        }

    def execute(self, sql: str, **parameters) -> None:
        with get_engine(self.database_url).begin() as connection:
            connection.execute(text(sql), parameters)

    def scalar(self, sql: str, **parameters):
        with get_engine(self.database_url).connect() as connection:
            return connection.execute(text(sql), parameters).scalar()


@contextmanager
def bench(name: str):
    """A migrated database and a queue of this run's own, removed afterwards. Its one server (the
    default, which a migrated database has) takes every site the benchmark makes: at its first
    capacity, the creates past the 100th would be measured as 409s."""
    queue = f"erpmax.bench-{RUN_ID}-{name}"
    directory = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        with migrated_database(f"provisioning_bench_{RUN_ID}_{name}") as url:
            with get_engine(url).begin() as connection:
                connection.execute(update(Server).values(capacity=MAX_CAPACITY))
            yield Bench(url, queue, directory)
    finally:
        delete_queues(queue)
        shutil.rmtree(directory, ignore_errors=True)


def seed_tenants(bench: Bench, count: int, status: TenantStatus = TenantStatus.PENDING) -> list[tuple[uuid.UUID, str]]:
    """``count`` tenants, each with an owner and a token; returns ``(tenant id, token)`` pairs."""
    now = utcnow()
    made = []
    with get_engine(bench.database_url).begin() as connection:
        for start in range(0, count, CHUNK):
            tenants, users, memberships, tokens = [], [], [], []
            for n in range(start, min(count, start + CHUNK)):
                tenant_id, user_id, token = uuid.uuid4(), uuid.uuid4(), TOKEN_PREFIX + secrets.token_urlsafe(32)
                tenants.append({"id": tenant_id, "slug": f"b{n}-{tenant_id.hex[:6]}", "name": f"Bench {n}", "status": status,
                                "created_at": now, "updated_at": now})  # fmt: skip
                users.append({"id": user_id, "email": f"owner{n}-{user_id.hex[:6]}@bench.test", "is_superuser": False,
                              "created_at": now})  # fmt: skip
                memberships.append({"id": uuid.uuid4(), "user_id": user_id, "tenant_id": tenant_id, "role": Role.OWNER,
                                    "created_at": now})  # fmt: skip
                tokens.append({"id": uuid.uuid4(), "user_id": user_id, "name": "bench", "prefix": token[:11], "created_at": now,
                               "token_hash": hashlib.sha256(token.encode()).hexdigest()})  # fmt: skip
                made.append((tenant_id, token))
            for model, rows in ((Tenant, tenants), (User, users), (Membership, memberships), (ApiToken, tokens)):
                connection.execute(insert(model), rows)
    return made


FINISHED_JOBS_SQL = text("""
    INSERT INTO provisioning_jobs (id, tenant_id, job_type, status, progress, message, options, dispatch_count,
                                   created_at, started_at, completed_at)
    SELECT gen_random_uuid(),
           CASE WHEN g % :share = 0 THEN CAST(:caller AS uuid) ELSE (CAST(:others AS uuid[]))[1 + g % :n_others] END,
           'backup_site', 'completed', 100, 'Completed', '{}', 1,
           now() - g * interval '1 second', now() - g * interval '1 second',
           now() - g * interval '1 second' + interval '3 seconds'
    FROM generate_series(1, :count) AS g
""")  # fmt: skip


COUNT_JOBS_SQL = text(
    "UPDATE tenants SET job_count = (SELECT count(*) FROM provisioning_jobs WHERE provisioning_jobs.tenant_id = tenants.id)"
)


def seed_finished_jobs(bench: Bench, count: int, caller: uuid.UUID, others: list[uuid.UUID], caller_share: int = 10) -> None:
    """``count`` completed jobs, one in ``caller_share`` of them the caller's, the rest spread over ``others``."""
    engine = get_engine(bench.database_url)
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))  # a million rows take longer than the service's 30 s
        # The per-row trigger that counts a tenant's jobs would update one row a million times in
        # one transaction; off for the load, and the counts set once after it.
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        parameters = {"share": caller_share, "caller": str(caller), "others": [str(other) for other in others]}
        connection.execute(FINISHED_JOBS_SQL, {**parameters, "n_others": len(others), "count": count})
        connection.execute(COUNT_JOBS_SQL)
    # The table in steady state, as autovacuum and the checkpointer leave it: statistics, a visibility
    # map for index-only scans, and no million dirty pages still to write while the figure is taken.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SET statement_timeout = 0"))
        connection.execute(text("VACUUM ANALYZE provisioning_jobs"))
        connection.execute(text("CHECKPOINT"))


def seed_pending_jobs(bench: Bench, tenants: list[uuid.UUID]) -> list[uuid.UUID]:
    """A pending create_site job for each tenant, marked as published (the benchmark publishes them
    itself: a worker's start-up sweep must not publish them a second time); returns their ids."""
    now = utcnow()
    rows = [
        {"id": uuid.uuid4(), "tenant_id": tenant, "job_type": JobType.CREATE_SITE, "status": JobStatus.PENDING, "progress": 0,
         "message": "Waiting for a worker", "options": {}, "created_at": now, "dispatched_at": now, "dispatch_count": 1}
        for tenant in tenants
    ]  # fmt: skip
    with get_engine(bench.database_url).begin() as connection:
        for start in range(0, len(rows), CHUNK):
            connection.execute(insert(ProvisioningJob), rows[start : start + CHUNK])
    return [row["id"] for row in rows]


def commits(bench: Bench) -> int:
    """Transactions committed in the benchmark's database so far (PostgreSQL's own count)."""
    with get_engine(bench.database_url).connect() as connection:
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        return connection.execute(text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")).scalar()


class Web:
    """Gunicorn as the Procfile runs it (2 worker processes), serving ``app`` on a free port."""

    def __init__(self, bench: Bench, app: str = "api:create_app()", name: str = "web"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = procfile_commands()["web"].replace('"api:create_app()"', f'"{app}"')
        env = process_environment({**bench.environment, "PORT": str(self.port), "WEB_CONCURRENCY": "2"})
        self.group = GroupProcess(name, command, env, bench.directory / f"{name}.log")
        try:
            wait_for(self._answers, timeout=60, interval=0.2, what=f"{name} to answer")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        self.group.assert_alive()
        try:
            requests.get(self.url, timeout=2)
        except requests.ConnectionError:
            return False
        return True

    def worker_pids(self) -> list[int]:
        return children(self.group.process.pid, through_shell=True)

    def stop(self) -> None:
        self.group.stop()


def children(pid: int, through_shell: bool = False) -> list[int]:
    """The process's children (with ``through_shell``, the children of the one process ``sh -c`` runs)."""
    found = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return children(found[0]) if through_shell and found else found


def rss_megabytes(pid: int) -> tuple[float, float]:
    """The process's resident memory now and at its peak, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    now, peak = (int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) for field in ("VmRSS", "VmHWM"))
    return now / 1024, peak / 1024


@dataclass(frozen=True)
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int


def wrk(
    url: str,
    seconds: int,
    connections: int,
    tokens: list[str] | None = None,
    bench_dir: Path | None = None,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Load ``url`` with wrk on loopback; with ``tokens``, POST a create with the next token each time."""
    command = [
        "wrk",
        "-t",
        str(min(2, connections)),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    env = None
    if tokens is not None:
        token_file = bench_dir / "tokens.txt"
        token_file.write_text("\n".join(tokens) + "\n")
        command += ["-s", str(WRK_SCRIPT)]
        env = {**os.environ, "BENCH_TOKENS": str(token_file)}
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True, env=env).stdout
    return _parse_wrk(output)


def pooled(runs: list[LoadResult]) -> LoadResult:
    """The turns of one side as one result: the mean of their rates (the turns are equally long),
    the medians of their percentiles, and all their requests and failures."""
    return LoadResult(
        statistics.mean(run.requests_per_second for run in runs),
        statistics.median(run.p50_ms for run in runs),
        statistics.median(run.p99_ms for run in runs),
        sum(run.requests for run in runs),
        sum(run.failures for run in runs),
    )


def _parse_wrk(output: str) -> LoadResult:
    def latency(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    total = int(re.search(r"^\s+(\d+) requests in", output, re.MULTILINE).group(1))
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failures = (int(failed.group(1)) if failed else 0) + (sum(map(int, errors.groups())) if errors else 0)
    rate = float(re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE).group(1))
    return LoadResult(rate, latency("50"), latency("99"), total, failures)


RABBITMQ_PROCESSES = frozenset({"beam.smp", "erl_child_setup", "epmd", "inet_gethost"})
CPU_PARTS = ("service", "postgres", "rabbitmq")


def cpu_by_part() -> Counter[str]:
    """CPU seconds the machine's live processes have used so far, by part: PostgreSQL, RabbitMQ,
    the load (wrk and this benchmark), and the Python processes under test (``service``: only
    the side taking its turn is busy). Kernel threads and everything else are left out."""
    used: Counter[str] = Counter()
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # it ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        utime, stime = stat[stat.rindex(")") + 2 :].split()[11:13]
        if name == "postgres":
            part = "postgres"
        elif name in RABBITMQ_PROCESSES:
            part = "rabbitmq"
        elif name == "wrk" or int(entry.name) == os.getpid():
            part = "load"
        elif b"python" in command or b"gunicorn" in command or b"celery" in command:
            part = "service"
        else:
            continue
        used[part] += (int(utime) + int(stime)) / ticks
    return used


@contextmanager
def metered(totals: Counter[str]):
    """Add the CPU each part uses during the block to ``totals``."""
    before = cpu_by_part()
    yield
    totals.update(cpu_by_part() - before)


def cpu_per(totals: Counter[str], count: int) -> dict[str, float]:
    """Milliseconds of CPU per request or job, by part (the load left out)."""
    return {part: 1000 * totals[part] / count for part in CPU_PARTS}


def percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]
