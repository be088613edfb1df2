"""``python -m benchmarks.standby`` (``make bench-standby``): a site in seconds, on the real bench.

Creates of ERPNext sites on the real Frappe 15 + ERPNext bench that ../shared/realbench stands up
(its setup.sh, as the real test suite runs it), in one run: first ``--off`` creates with pooling
off (``bench new-site``), then ``--creates`` creates claiming standby sites from a warm pool of
as many (made first, about 70 s each). Each create is timed from its ``POST /jobs`` (the API in
this process, on PostgreSQL and RabbitMQ, a real worker of two processes on the bench) to the
job's ``completed``, and to the first successful Administrator login on the new site with the
password its owner reveals (``bench serve``, asked every 0.2 s). The creates run one after the
other while the sweeper refills the pool behind them, as it would in production.

Everything it makes is dropped at the end: the sites, the standby sites, its database and queue.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests

from api import create_app
from benchmarks.parts import bench
from provisioning.accounts.audit import SYSTEM
from provisioning.messaging.broker import Dispatcher
from provisioning.platform.db import session_factory
from provisioning.platform.settings import DEFAULT_SERVER_NAME, load_settings
from provisioning.servers.registry import ServerRegistry
from tests.factories import TenantFactory
from tests.helpers import machine_lock, wait_for
from tests.integration.real_bench.conftest import environment_of_bench, folders_of_bench_user, set_up_realbench
from tests.processes import free_port
from tests.stack import SweeperProcess, WorkerProcess

JOBS = "/api/v1/provisioning/jobs"
JOB_SECONDS = 900


@dataclass
class Create:
    """One create, as its customer lived it."""

    path: str  # "standby" or "new-site": which way its steps went
    to_completed: float
    to_login: float


@dataclass
class Run:
    environment: dict[str, str]
    client: object
    sessions: object
    serve_url: str


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.standby", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--creates", type=int, default=10, help="creates with a warm pool (default 10; the pool's size)")
    parser.add_argument("--off", type=int, default=3, help="creates with pooling off (default 3)")
    parser.add_argument("--apps", default="erpnext", help="SITE_APPS (default erpnext)")
    parser.add_argument("--out", type=Path, default=Path("var/bench"), help="directory for the JSON results")
    args = parser.parse_args()
    with machine_lock("erpmax-realbench", "the real-bench test suite to finish", timeout=1800), bench("standby") as made:
        realbench = set_up_realbench()
        with folders_of_bench_user(realbench) as folders:
            environment = {
                **environment_of_bench(_Stack(made.environment), realbench, folders, f"b{uuid.uuid4().hex[:8]}.bench.test"),
                "SITE_APPS": args.apps,
                "SWEEP_INTERVAL_SECONDS": "5",
            }
            off, warm = measure(environment, realbench, args.creates, args.off, made.directory)
    print(table(off, warm))
    args.out.mkdir(parents=True, exist_ok=True)
    when = datetime.now(timezone.utc)
    path = args.out / f"standby-{when:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"when": when.isoformat(), "apps": args.apps, "off": [asdict(c) for c in off],
                                "warm": [asdict(c) for c in warm]}, indent=1))  # fmt: skip
    print(f"\nresults: {path}")
    return 0


class _Stack:
    """What ``environment_of_bench`` reads of a test's stack: its environment."""

    def __init__(self, environment: dict[str, str]):
        self.environment = environment


def measure(environment: dict[str, str], realbench, creates: int, off: int, directory: Path) -> tuple[list[Create], list[Create]]:
    settings = load_settings(environment)
    dispatcher = Dispatcher(settings)
    worker = WorkerProcess(environment, dispatcher, concurrency=2)
    port = free_port()
    serve = subprocess.Popen([realbench.executable, "serve", "--port", str(port)], cwd=realbench.path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    run = Run(environment, create_app(settings).test_client(), session_factory(settings.database_url), f"http://127.0.0.1:{port}")
    tenants = []
    sweeper = None
    try:
        measured_off = [create(run, tenants, "new-site") for _ in range(off)]
        print(f"pooling off: {[round(c.to_login, 1) for c in measured_off]} s to the first login", flush=True)
        keep_pool(run, creates)
        sweeper = SweeperProcess(environment, directory)
        wait_for(lambda: ready(run) == creates, timeout=creates * JOB_SECONDS, interval=2, what=f"{creates} standby sites")
        print(f"pool of {creates} ready", flush=True)
        measured_warm = [create(run, tenants, "standby") for _ in range(creates)]
        return measured_off, measured_warm
    finally:
        if sweeper is not None:
            sweeper.stop()
        os.killpg(serve.pid, signal.SIGTERM)  # with the reloader's child it starts
        serve.wait(timeout=30)
        for tenant in tenants:
            delete(run, tenant)
        keep_pool(run, 0)
        drop_pool(run, environment, directory)
        worker.stop()


def create(run: Run, tenants: list, expected_path: str) -> Create:
    with run.sessions() as session:
        tenant = TenantFactory(session).create()
        session.commit()
    tenants.append(tenant)
    headers = tenant.headers()
    started = time.monotonic()
    answer = run.client.post(JOBS, json={"job_type": "create_site"}, headers=headers)
    assert answer.status_code == 201, answer.json
    job_id = answer.json["data"]["id"]
    job = wait_for(lambda: (job := run.client.get(f"{JOBS}/{job_id}", headers=headers).json["data"])["status"]
                   in ("completed", "failed") and job, timeout=JOB_SECONDS, interval=0.1, what=f"create {job_id}")  # fmt: skip
    completed = time.monotonic() - started
    assert job["status"] == "completed", job
    steps = {step["name"]: step["status"] for step in run.client.get(f"{JOBS}/{job_id}/steps", headers=headers).json["data"]}
    path = "standby" if steps["claim_standby"] == "completed" and steps["create_site"] == "skipped" else "new-site"
    password = run.client.post("/api/v1/tenants/current/admin-password", headers=headers).json["data"]["password"]
    site = f"{tenant.tenant.slug}.{run.environment['SITE_DOMAIN']}"
    wait_for(lambda: logged_in(run.serve_url, site, password), timeout=120, interval=0.2, what=f"a login on {site}")
    measured = Create(path, round(completed, 2), round(time.monotonic() - started, 2))
    print(f"{path}: {measured.to_completed} s to completed, {measured.to_login} s to the first login", flush=True)
    if path != expected_path:
        print(f"  (expected {expected_path}: the pool was empty or the claim fell back)", flush=True)
    return measured


def logged_in(url: str, site: str, password: str) -> bool:
    try:
        answer = requests.post(f"{url}/api/method/login", headers={"Host": site}, timeout=30,
                               data={"usr": "Administrator", "pwd": password})  # fmt: skip
    except (requests.ConnectionError, requests.Timeout):
        return False
    return answer.status_code == 200 and answer.json().get("message") == "Logged In"


def keep_pool(run: Run, size: int) -> None:
    with run.sessions() as session:
        ServerRegistry(session, SYSTEM).update(DEFAULT_SERVER_NAME, standby_pool_size=size, standby_batch=max(size, 1))
        session.commit()


def ready(run: Run) -> int:
    with run.sessions() as session:
        return ServerRegistry(session, SYSTEM).view(DEFAULT_SERVER_NAME).standby_ready


def delete(run: Run, tenant) -> None:
    answer = run.client.post(JOBS, json={"job_type": "delete_site", "skip_final_backup": True}, headers=tenant.headers())
    if answer.status_code == 201:
        job_id = answer.json["data"]["id"]
        wait_for(lambda: run.client.get(f"{JOBS}/{job_id}", headers=tenant.headers()).json["data"]["status"]
                 in ("completed", "failed"), timeout=JOB_SECONDS, interval=0.5, what=f"delete {job_id}")  # fmt: skip


def drop_pool(run: Run, environment: dict[str, str], directory: Path) -> None:
    """With pooling off, a sweep's refill drops the standby sites left."""
    def emptied() -> bool:
        with run.sessions() as session:
            return ServerRegistry(session, SYSTEM).view(DEFAULT_SERVER_NAME).server.site_count == 0

    sweeper = SweeperProcess(environment, directory)
    try:
        wait_for(emptied, timeout=JOB_SECONDS, interval=2, what="the standby sites to be dropped")
    finally:
        sweeper.stop()


def table(off: list[Create], warm: list[Create]) -> str:
    def row(name: str, creates: list[Create]) -> str:
        completed = [c.to_completed for c in creates]
        login = [c.to_login for c in creates]
        paths = ", ".join(sorted({c.path for c in creates}))
        return (f"| {name} | {len(creates)} | {paths} | {statistics.median(completed):.1f} / {max(completed):.1f} | "
                f"{statistics.median(login):.1f} / {max(login):.1f} |")  # fmt: skip

    p50_off = statistics.median(c.to_login for c in off)
    p50_warm = statistics.median(c.to_login for c in warm)
    return "\n".join([
        "| creates | n | path | to completed, p50 / max (s) | to first login, p50 / max (s) |",
        "|---|---|---|---|---|",
        row("warm pool", warm),
        row("pooling off", off),
        "",
        f"p50 to the first login: {p50_off / p50_warm:.1f}x faster with the pool; "
        f"slowest with the pool {max(c.to_login for c in warm):.1f} s, fastest without {min(c.to_login for c in off):.1f} s",
    ])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
