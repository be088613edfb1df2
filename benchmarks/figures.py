"""Each figure of the benchmark, measured beside its bare baseline in the same run."""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from benchmarks import baseline
from benchmarks.parts import (
    Bench,
    Web,
    bench,
    children,
    commits,
    percentile,
    rss_megabytes,
    seed_finished_jobs,
    seed_pending_jobs,
    seed_tenants,
    wrk,
)
from provisioning.broker import Dispatcher
from provisioning.settings import load_settings
from tests.helpers import wait_for
from tests.stack import WorkerProcess

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


def create_throughput(seconds: int, tenants: int) -> list[Figure]:
    """POST /jobs through gunicorn (2 workers, 4 connections) against a view doing one INSERT and one publish."""
    with bench("create") as stack:
        tokens = [token for _, token in seed_tenants(stack, tenants)]
        ours = _load(stack, "api:create_app()", f"{JOBS_PATH}", seconds, tokens)
        bare = _load(stack, "benchmarks.baseline:create_app()", "/jobs", seconds, tokens)
    clean = not ours.failures and not bare.failures  # a failed request must not count as throughput
    failed = f"; FAILED requests: {ours.failures} ours, {bare.failures} bare" if not clean else ""
    return [
        Figure("create throughput", "req/s", ours.requests_per_second, bare.requests_per_second, ">= 0.7x",
               clean and ours.requests_per_second >= 0.7 * bare.requests_per_second, f"{ours.requests} requests{failed}"),
        Figure("create p99", "ms", ours.p99_ms, bare.p99_ms, "<= 2x", ours.p99_ms <= 2 * bare.p99_ms,
               f"p50 {ours.p50_ms:.1f} vs {bare.p50_ms:.1f} ms"),
    ]  # fmt: skip


def _load(stack: Bench, app: str, path: str, seconds: int, tokens: list[str]):
    web = Web(stack, app, name=app.split(":")[0])  # stops itself if it never answers
    try:
        wrk(web.url + path, 2, 4, tokens[-2000:], stack.directory)  # warm up on tokens the measured run reaches last
        return wrk(web.url + path, seconds, 4, tokens, stack.directory)
    finally:
        web.stop()


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
class WorkerRun:
    jobs_per_second: float
    commits_per_job: float


def worker_throughput(jobs: int, existing_rows: int = 0) -> WorkerRun:
    """Simulated zero-second jobs through one worker of 2 processes, from the first publish to the last completed."""
    with bench(f"work{existing_rows}") as stack:
        tenants = [tenant for tenant, _ in seed_tenants(stack, jobs + 10)]
        if existing_rows:
            seed_finished_jobs(stack, existing_rows, tenants[-1], tenants[-10:-1])
        job_ids = seed_pending_jobs(stack, tenants[:jobs])
        dispatcher = Dispatcher(load_settings(stack.environment))
        worker = WorkerProcess(stack.environment, dispatcher, concurrency=2)
        try:
            before = commits(stack)
            started = time.monotonic()
            for job_id in job_ids:
                dispatcher.send_job(job_id)
            wait_for(lambda: _active(stack) == 0, timeout=600, interval=0.1, what=f"{jobs} jobs to finish")
            elapsed = time.monotonic() - started
            if (completed := _completed(stack)) != jobs:
                raise RuntimeError(f"only {completed} of {jobs} jobs completed")
        finally:
            worker.stop()
        time.sleep(1)  # PostgreSQL's statistics reach pg_stat_database up to a second late
        return WorkerRun(jobs / elapsed, (commits(stack) - before) / jobs)


def _active(stack: Bench) -> int:
    """Jobs not finished yet: read through the small index of active jobs, so that watching the run
    does not itself scan a table of a million rows ten times a second."""
    return stack.scalar("SELECT count(*) FROM provisioning_jobs WHERE status IN ('pending', 'running', 'cancelling')")


def _completed(stack: Bench) -> int:
    """Completed creates: the rows seeded to fill the table are backups."""
    return stack.scalar("SELECT count(*) FROM provisioning_jobs WHERE job_type = 'create_site' AND status = 'completed'")


@contextmanager
def _bare_worker(name: str):
    """A worker of 2 processes for the no-op task, on a queue of its own; yields the queue, a
    dispatcher to publish with, and the file each task run appends its start to."""
    with bench(name) as stack:
        starts = stack.directory / "starts.txt"
        environment = {**stack.environment, baseline.STARTS_FILE: str(starts)}
        dispatcher = Dispatcher(load_settings(environment))
        worker = WorkerProcess(environment, dispatcher, concurrency=2, app="benchmarks.baseline")
        try:
            yield stack.queue, dispatcher, starts
        finally:
            worker.stop()


def bare_worker_throughput(tasks: int) -> float:
    """The no-op task through one worker of 2 processes with acks late and prefetch 1."""
    with _bare_worker("bare") as (queue, dispatcher, starts):
        started = time.monotonic()
        for _ in range(tasks):
            baseline.publish(dispatcher.app, queue, str(uuid.uuid4()))
        wait_for(lambda: _lines(starts) >= tasks, timeout=600, interval=0.05, what=f"{tasks} no-op tasks")
        return tasks / (time.monotonic() - started)


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
    with _bare_worker("bare-dispatch") as (queue, dispatcher, starts):
        bare = [_one_bare_dispatch(dispatcher, queue, starts) for _ in range(samples)]
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


def _one_bare_dispatch(dispatcher: Dispatcher, queue: str, starts: Path) -> float:
    task_id = str(uuid.uuid4())
    asked = time.time()
    baseline.publish(dispatcher.app, queue, task_id)
    started = wait_for(lambda: _start_of(starts, task_id), timeout=30, interval=0.002, what=f"task {task_id} to start")
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
