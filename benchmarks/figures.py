"""Each figure of the benchmark, measured beside its bare baseline in the same run."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

from benchmarks import baseline
from benchmarks.parts import (
    Bench,
    Web,
    bench,
    children,
    commits,
    cpu_per,
    metered,
    percentile,
    pooled,
    rss_megabytes,
    seed_finished_jobs,
    seed_pending_jobs,
    seed_tenants,
    wrk,
)
from provisioning.messaging.broker import Dispatcher
from provisioning.platform.settings import DEFAULT_SERVER_NAME, load_settings
from tests.helpers import wait_for
from tests.stack import SweeperProcess, WorkerProcess

JOBS_PATH = "/api/v1/provisioning/jobs"


@dataclass(frozen=True)
class Figure:
    """One row of the table: ours beside the baseline's, and whether the target is met."""

    name: str
    unit: str
    ours: float
    baseline: float | None
    target: str
    met: bool
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.ours / self.baseline if self.baseline else None


# The throughput figures alternate ours and the baseline this many times, in turn order ABBA..., and
# pool each side's runs: on a shared machine the pace drifts within a run too, and alternating
# spreads the drift over both sides instead of charging it to whichever ran second.
ROUNDS = 3


def turns(names: list[str], rounds: int = ROUNDS) -> list[list[str]]:
    """The order of each round: as given, then reversed, and so on."""
    return [names if round_ % 2 == 0 else names[::-1] for round_ in range(rounds)]


def create_throughput(seconds: int, tenants: int) -> list[Figure]:
    """POST /jobs through gunicorn (2 workers, 4 connections) against a view doing one INSERT and
    one publish, both served at once and loaded in turns."""
    with bench("create") as stack:
        tokens = [token for _, token in seed_tenants(stack, tenants)]
        # Tokens of a slice are never used twice by our API: a tenant has one create.
        slices = [tokens[n :: ROUNDS + 1] for n in range(ROUNDS + 1)]
        relay = SweeperProcess(stack.environment, stack.directory)  # announces each created job
        servers = {"ours": (Web(stack, name="ours"), JOBS_PATH)}
        try:
            servers["bare"] = (Web(stack, "benchmarks.baseline:create_app()", name="bare"), "/jobs")
            for web, path in servers.values():
                wrk(web.url + path, 2, 4, slices[0], stack.directory)  # warm up
            runs, cpu = {"ours": [], "bare": []}, {"ours": Counter(), "bare": Counter()}
            for round_, order in enumerate(turns(["ours", "bare"])):
                for name in order:
                    web, path = servers[name]
                    with metered(cpu[name]):
                        runs[name].append(wrk(web.url + path, max(1, seconds // ROUNDS), 4, slices[1 + round_], stack.directory))
        finally:
            for web, _path in servers.values():
                web.stop()
            relay.stop()
    ours, bare = pooled(runs["ours"]), pooled(runs["bare"])
    clean = not ours.failures and not bare.failures  # a failed request must not count as throughput
    failed = f"; FAILED requests: {ours.failures} ours, {bare.failures} bare" if not clean else ""
    return [
        Figure("create throughput", "req/s", ours.requests_per_second, bare.requests_per_second, ">= 0.7x",
               clean and ours.requests_per_second >= 0.7 * bare.requests_per_second,
               f"{ours.requests} requests in {ROUNDS} turns each{failed}"),
        Figure("create p99", "ms", ours.p99_ms, bare.p99_ms, "<= 2x", ours.p99_ms <= 2 * bare.p99_ms,
               f"p50 {ours.p50_ms:.1f} vs {bare.p50_ms:.1f} ms (medians of the turns)"),
        cpu_figure("create CPU per request", cpu_per(cpu["ours"], ours.requests), cpu_per(cpu["bare"], bare.requests)),
    ]  # fmt: skip


def cpu_figure(name: str, ours: dict[str, float], baseline: dict[str, float]) -> Figure:
    """What a request or a job costs the machine, ours beside the baseline's (shown, no target),
    and in the note by part: the Python processes under test, PostgreSQL and RabbitMQ."""
    note = "; ".join(f"{side} " + ", ".join(f"{part} {ms:.2f}" for part, ms in parts.items())
                     for side, parts in (("ours", ours), ("bare", baseline)))  # fmt: skip
    return Figure(name, "ms CPU", sum(ours.values()), sum(baseline.values()), "(shown)", True, note)


def read_latency(seconds: int, large_rows: int) -> list[Figure]:
    """GET /jobs?page=1&size=20 with 1,000 rows in the table, then with ``large_rows``."""
    with bench("read") as stack:
        (caller, token), *others = seed_tenants(stack, 10)
        other_ids = [tenant for tenant, _ in others]
        seed_finished_jobs(stack, 1000, caller, other_ids)
        web = Web(stack)
        try:
            url = f"{web.url}{JOBS_PATH}?page=1&size=20"
            headers = {"Authorization": f"Bearer {token}"}
            small = wrk(url, seconds, 1, headers=headers)
            seed_finished_jobs(stack, large_rows - 1000, caller, other_ids)
            large = wrk(url, seconds, 1, headers=headers)
        finally:
            web.stop()
    return [
        Figure(f"read p50, {large_rows:,} rows", "ms", large.p50_ms, small.p50_ms, "<= 1.3x, < 10 ms",
               large.p50_ms <= 1.3 * small.p50_ms and large.p50_ms < 10, "baseline: the same request with 1,000 rows"),
        Figure(f"read p99, {large_rows:,} rows", "ms", large.p99_ms, small.p99_ms, "(shown)", True),
    ]  # fmt: skip


@dataclass(frozen=True)
class WorkerRuns:
    """Jobs (or no-op tasks) per second of each side, its turns pooled; our commits per job; and
    the CPU milliseconds per job of each side, by part."""

    jobs_per_second: dict[str, float]
    commits_per_job: float
    cpu_per_job: dict[str, dict[str, float]]


def worker_throughputs(jobs: int, bare: bool, full_rows: int) -> WorkerRuns:
    """Simulated zero-second jobs through a worker of 2 processes, from the first publish to the
    last completed, in turns with the no-op task through one of its own (``bare``) and with the
    same jobs on a table of ``full_rows`` finished jobs (``full_rows``): each side runs ``jobs``
    in all, a share per turn, and its rate is the pool of its turns."""
    share = max(1, jobs // ROUNDS)
    with ExitStack() as workers:
        sides = {"ours": workers.enter_context(_job_worker("work", share * ROUNDS))}
        if bare:
            sides["bare"] = workers.enter_context(_bare_worker("bare"))
        if full_rows:
            sides["full"] = workers.enter_context(_job_worker("full", share * ROUNDS, full_rows))
        elapsed = {name: 0.0 for name in sides}
        cpu = {name: Counter() for name in sides}
        for order in turns(list(sides)):
            for name in order:
                with metered(cpu[name]):
                    elapsed[name] += sides[name].run(share)
    done = share * ROUNDS
    return WorkerRuns(
        {name: done / seconds for name, seconds in elapsed.items()},
        sides["ours"].commits_per_job,
        {name: cpu_per(used, done) for name, used in cpu.items()},
    )


@dataclass
class JobTurns:
    """Our worker's turns: each publishes the next pending jobs and waits until they are finished."""

    stack: Bench
    dispatcher: Dispatcher
    job_ids: list[uuid.UUID]
    commits_before: int
    done: int = 0
    commits_per_job: float | None = None  # known once the worker stopped

    def run(self, count: int) -> float:
        """Seconds from the first publish of the next ``count`` jobs until all are finished."""
        started = time.monotonic()
        for job_id in self.job_ids[self.done : self.done + count]:
            self.dispatcher.send_job(job_id, DEFAULT_SERVER_NAME)  # the seeded tenants are on no server: any takes them
        self.done += count
        waiting = len(self.job_ids) - self.done  # the later turns' jobs, pending and not yet published
        wait_for(lambda: _active(self.stack) == waiting, timeout=600, interval=0.1, what=f"{count} jobs to finish")
        elapsed = time.monotonic() - started
        if (completed := _completed(self.stack)) != self.done:
            raise RuntimeError(f"only {completed} of {self.done} jobs completed")
        return elapsed

    def count_commits(self) -> None:
        """Once the worker stopped: its connections wrote their statistics as they closed."""
        time.sleep(1)  # and pg_stat_database has them up to a second later
        self.commits_per_job = (commits(self.stack) - self.commits_before) / max(1, self.done)


@contextmanager
def _job_worker(name: str, jobs: int, existing_rows: int = 0) -> Iterator[JobTurns]:
    """Our worker on a database of its own, with ``existing_rows`` finished jobs in its table and a
    pending job (marked published, so no sweep sends it) for each tenant it will run."""
    with bench(f"{name}{existing_rows}") as stack:
        tenants = [tenant for tenant, _ in seed_tenants(stack, jobs + 10)]
        if existing_rows:
            seed_finished_jobs(stack, existing_rows, tenants[-1], tenants[-10:-1])
        job_ids = seed_pending_jobs(stack, tenants[:jobs])
        dispatcher = Dispatcher(load_settings(stack.environment))
        worker = WorkerProcess(stack.environment, dispatcher, concurrency=2)
        relay = SweeperProcess(stack.environment, stack.directory)  # announces each job's status changes
        job_turns = JobTurns(stack, dispatcher, job_ids, commits(stack))
        try:
            yield job_turns
        finally:
            worker.stop()
            relay.stop()
        job_turns.count_commits()


def _active(stack: Bench) -> int:
    """Jobs not finished yet: read through the small index of active jobs, so that watching the run
    does not itself scan a table of a million rows ten times a second."""
    return stack.scalar("SELECT count(*) FROM provisioning_jobs WHERE status IN ('pending', 'running', 'cancelling')")


def _completed(stack: Bench) -> int:
    """Completed creates: the rows seeded to fill the table are backups."""
    return stack.scalar("SELECT count(*) FROM provisioning_jobs WHERE job_type = 'create_site' AND status = 'completed'")


@dataclass
class BareTurns:
    """The no-op task's worker, its queue, a dispatcher to publish with, and the file each task
    run appends its start to (``<task id> <start time>``)."""

    queue: str
    dispatcher: Dispatcher
    starts: Path
    done: int = 0

    def publish(self, task_id: str) -> None:
        baseline.publish(self.dispatcher.app, self.queue, task_id)

    def run(self, count: int) -> float:
        """Seconds from the first publish of ``count`` no-op tasks until the last started."""
        started = time.monotonic()
        for _ in range(count):
            self.publish(str(uuid.uuid4()))
        self.done += count
        wait_for(lambda: _lines(self.starts) >= self.done, timeout=600, interval=0.05, what=f"{count} no-op tasks")
        return time.monotonic() - started


@contextmanager
def _bare_worker(name: str) -> Iterator[BareTurns]:
    """A worker of 2 processes for the no-op task, with acks late and prefetch 1, on a queue of its own."""
    with bench(name) as stack:
        starts = stack.directory / "starts.txt"
        environment = {**stack.environment, baseline.STARTS_FILE: str(starts)}
        dispatcher = Dispatcher(load_settings(environment))
        worker = WorkerProcess(environment, dispatcher, concurrency=2, app="benchmarks.baseline")
        try:
            yield BareTurns(stack.queue, dispatcher, starts)
        finally:
            worker.stop()


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def dispatch_latency(samples: int) -> list[Figure]:
    """With an idle worker, one job at a time: as the issue counts it, ours from the POST's
    response to the job's ``started_at``, the bare one from the publish call to the task's start.

    We publish before we answer, so our job often starts before the answer arrives: a negative
    latency, which is what the client sees. The rows counted from the asking show the API's
    own work too: what whoever waits for the job pays in all.
    """
    with bench("dispatch") as stack:
        tokens = [token for _, token in seed_tenants(stack, samples + 5)]
        dispatcher = Dispatcher(load_settings(stack.environment))
        worker = WorkerProcess(stack.environment, dispatcher, concurrency=2)
        try:
            web = Web(stack)
            try:
                with requests.Session() as http:
                    timings = [_one_dispatch(stack, http, web.url, token) for token in tokens[:samples]]
            finally:
                web.stop()
        finally:
            worker.stop()
    with _bare_worker("bare-dispatch") as bare_worker:
        bare = [_one_bare_dispatch(bare_worker) for _ in range(samples)]
    from_answer = [answered for _asked, answered in timings]
    from_asking = [asked for asked, _answered in timings]
    figures = []
    for at in (50, 99):
        ours, baseline = percentile(from_answer, at), percentile(bare, at)
        figures.append(Figure(f"dispatch p{at}", "ms", ours, baseline, "<= 2x", ours <= 2 * baseline,
                              "from our response to the job's start; bare: from the publish call"))  # fmt: skip
    for at in (50, 99):
        figures.append(Figure(f"dispatch p{at}, from asking", "ms", percentile(from_asking, at), percentile(bare, at),
                              "(shown)", True, "from the POST's start: the API's own work included"))  # fmt: skip
    return figures


def _one_dispatch(stack: Bench, http: requests.Session, url: str, token: str) -> tuple[float, float]:
    """Milliseconds from the POST's start, and from its response, to the job's start."""
    asked = time.time()
    response = http.post(url + JOBS_PATH, json={"job_type": "create_site"}, headers={"Authorization": f"Bearer {token}"})
    answered = time.time()
    job_id = response.json()["data"]["id"]
    started = wait_for(
        lambda: stack.scalar("SELECT extract(epoch FROM started_at) FROM provisioning_jobs WHERE id = :id", id=job_id),
        timeout=30, interval=0.002, what=f"job {job_id} to start",
    )  # fmt: skip
    wait_for(lambda: _completed_job(stack, job_id), timeout=30, interval=0.01, what=f"job {job_id} to end")
    return (float(started) - asked) * 1000, (float(started) - answered) * 1000


def _completed_job(stack: Bench, job_id: str) -> bool:
    return stack.scalar("SELECT status FROM provisioning_jobs WHERE id = :id", id=job_id) == "completed"


def _one_bare_dispatch(bare: BareTurns) -> float:
    task_id = str(uuid.uuid4())
    asked = time.time()
    bare.publish(task_id)
    started = wait_for(lambda: _start_of(bare.starts, task_id), timeout=30, interval=0.002, what=f"task {task_id} to start")
    return (started - asked) * 1000


def _start_of(starts: Path, task_id: str) -> float | None:
    for line in reversed(starts.read_text().splitlines() if starts.exists() else []):
        if line.startswith(task_id):
            return float(line.split()[1])
    return None


def memory(jobs: int) -> list[Figure]:
    """Peak RSS of a gunicorn worker and a worker's pool process while ``jobs`` go through both,
    and how much RSS grew from a tenth of the way to the end."""
    with bench("memory") as stack:
        tokens = [token for _, token in seed_tenants(stack, jobs)]
        dispatcher = Dispatcher(load_settings(stack.environment))
        worker = WorkerProcess(stack.environment, dispatcher, concurrency=2)
        web = None
        try:
            web = Web(stack)
            processes = {"gunicorn worker": web.worker_pids(), "job worker": children(worker.process.pid)}
            checkpoint = jobs // 10
            _post_all(web.url, tokens[:checkpoint])
            wait_for(lambda: _completed(stack) >= checkpoint, timeout=600, interval=0.1, what="the first tenth")
            early = {name: max(rss_megabytes(pid)[0] for pid in pids) for name, pids in processes.items()}
            _post_all(web.url, tokens[checkpoint:])
            wait_for(lambda: _completed(stack) >= jobs, timeout=1200, interval=0.1, what=f"{jobs} jobs")
            late = {name: max(rss_megabytes(pid)[0] for pid in pids) for name, pids in processes.items()}
            peak = {name: max(rss_megabytes(pid)[1] for pid in pids) for name, pids in processes.items()}
        finally:
            worker.stop()
            if web is not None:
                web.stop()
    figures = []
    for name in processes:
        growth = (late[name] / early[name] - 1) * 100
        figures.append(Figure(f"{name} peak RSS", "MB", peak[name], None, "< 150 MB", peak[name] < 150))
        figures.append(Figure(f"{name} RSS growth", "%", growth, None, "< 10 %", growth < 10,
                              f"{early[name]:.1f} MB after {checkpoint:,} jobs, {late[name]:.1f} MB after {jobs:,}"))  # fmt: skip
    return figures


def _post_all(url: str, tokens: list[str], connections: int = 4) -> None:
    """POST a create for each token over ``connections`` keep-alive connections."""

    def post(share: list[str]) -> None:
        with requests.Session() as http:
            for token in share:
                response = http.post(
                    url + JOBS_PATH, json={"job_type": "create_site"}, headers={"Authorization": f"Bearer {token}"}
                )
                response.raise_for_status()

    threads = [threading.Thread(target=post, args=(tokens[n::connections],)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
