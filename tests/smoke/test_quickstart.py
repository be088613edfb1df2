"""`make run` as a newcomer starts it: in a terminal, on its embedded defaults and default ports, no
PostgreSQL or RabbitMQ. The curl lines it prints work as printed, every signal it gives about
itself is green (doctor, /readyz, /metrics), its log holds no warning, Ctrl-C stops every process
and make exits 0; run again, it keeps its data and prints a job that works then.

It uses the machine's default ports (8000, 5555, 6399), so a lock keeps two test runs on one
machine from overlapping.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from provisioning.operations.quickstart import port_is_free
from tests.helpers import machine_lock, not_private, wait_for
from tests.processes import (
    PROJECT_ROOT,
    TAG_VARIABLE,
    GroupProcess,
    TerminalProcess,
    free_port,
    kill_tagged,
    new_tag,
    tagged_processes,
)

# The default ports take one test at a time: on one xdist worker, rather than several waiting on the lock.
pytestmark = pytest.mark.xdist_group("default_ports")

HTTP_TIMEOUT = 10
DEFAULT_PORTS = {"PORT": 8000, "FLOWER_PORT": 5555, "EMBEDDED_BROKER_PORT": 6399}
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
CURL_LINE = re.compile(r"^\s+(curl .*)$", re.MULTILINE)
TOKEN_LINE = re.compile(r"^\s+(erpx_\S+)\s*$", re.MULTILINE)
DOCS_LINE = re.compile(r"API docs:\s+(\S+)")
FLOWER_LINE = re.compile(r"Flower:\s+(\S+)\s+\(user (\S+), password (\S+)\)")
# A log line of ours ("... WARNING worker celery.x: ...") or Celery's and gunicorn's at warning or worse.
LOUD_LINE = re.compile(r"\s(WARNING|ERROR|CRITICAL)\s")
# The one warning a clean start may show: Celery's, when the worker runs as root. It is true, and
# the same Procfile line runs in production, where running the worker as root is a real risk.
ALLOWED_LOUD_LINES = (
    [re.compile(r"SecurityWarning: You're running the worker with superuser privileges")] if os.geteuid() == 0 else []
)
# Anything that would point the quickstart elsewhere than its embedded defaults and default ports.
NOT_INHERITED = {
    "database_url", "provisioning_queue_name", "data_dir", "flower_basic_auth", "site_credentials_key", "worker_name",
    "backup_path", "log_format", *(name.lower() for name in DEFAULT_PORTS),
}  # fmt: skip
NOT_INHERITED_PREFIXES = ("rabbitmq_", "simulated_")


@dataclass
class Run:
    """One `make run` in a terminal, with what its banner said."""

    terminal: TerminalProcess
    tag: str
    token: str
    curl_lines: list[str]
    docs_url: str
    flower_url: str
    flower_auth: tuple[str, str]


@pytest.fixture
def default_ports():
    """The machine's default ports, for this test alone: wait for any other run's quickstart
    test to finish, then fail, saying which, if something else holds one."""
    with machine_lock("erpmax-quickstart-default-ports", "another test run's quickstart to finish"):
        for name, port in DEFAULT_PORTS.items():
            if not port_is_free(port):
                pytest.fail(
                    f"port {port} ({name}) is taken by another program; this test runs `make run` on its default "
                    f"ports {', '.join(map(str, DEFAULT_PORTS.values()))}: stop that program and run it again"
                )
        yield


def newcomer_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in NOT_INHERITED and not key.lower().startswith(NOT_INHERITED_PREFIXES)
    }
    return {**env, "DATA_DIR": str(data_dir), **extra}


@pytest.fixture
def make_run(tmp_path, default_ports):
    """Starts `make run` in a terminal; every run shares one data directory, as two `make run` do."""
    data_dir = tmp_path / "data"
    tag = new_tag()
    started: list[TerminalProcess] = []

    def start(step_seconds: str = "0.2") -> Run:
        # Quick steps, so the jobs end soon; nothing else differs from what a newcomer runs.
        env = newcomer_environment(data_dir, SIMULATED_STEP_SECONDS=step_seconds, **{TAG_VARIABLE: tag})
        terminal = TerminalProcess("make run", ["make", "run"], env, tmp_path / f"make-run-{len(started)}.log")
        started.append(terminal)

        def banner():
            terminal.assert_alive()
            output = ANSI_COLOUR.sub("", terminal.output())
            found = [pattern.search(output) for pattern in (TOKEN_LINE, CURL_LINE, DOCS_LINE, FLOWER_LINE)]
            return output if all(found) else None

        output = wait_for(banner, timeout=120, interval=0.1, what="the quickstart's banner")
        token, docs, flower = TOKEN_LINE.search(output), DOCS_LINE.search(output), FLOWER_LINE.search(output)
        return Run(terminal, tag, token[1], CURL_LINE.findall(output), docs[1], flower[1], (flower[2], flower[3]))

    try:
        yield start, data_dir
    finally:
        kill_tagged(tag)  # the quickstart left make's process group, and honcho's processes have sessions of their own
        for terminal in started:
            print(terminal.describe())  # shown by pytest when the test failed


def curl(line: str) -> dict:
    """Run a curl line exactly as the banner printed it, and read its JSON answer."""
    result = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=HTTP_TIMEOUT)
    assert result.returncode == 0, f"{line}\nexit {result.returncode}: {result.stderr}"
    return json.loads(result.stdout)


def run_the_printed_job(run: Run) -> dict:
    """Send the job the banner's first curl line shows, follow it with the second, and return it once it finished."""
    terminal = run.terminal

    def answers(url: str, **kwargs):
        def attempt():
            terminal.assert_alive()
            try:
                return requests.get(url, timeout=HTTP_TIMEOUT, **kwargs)
            except requests.ConnectionError:
                return None

        return attempt

    docs = wait_for(answers(run.docs_url), timeout=60, interval=0.2, what=f"{run.docs_url} to answer")
    assert docs.status_code == 200

    request, follow = run.curl_lines
    created = curl(request)["data"]
    assert created["status"] == "pending", created

    def finished():
        terminal.assert_alive()
        [job] = [job for job in curl(follow)["data"] if job["id"] == created["id"]]
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    job = wait_for(finished, timeout=60, interval=0.2, what=f"job {created['id']} to finish")
    assert (job["status"], job["progress"]) == ("completed", 100), job

    workers = wait_for(
        lambda: (answer := answers(f"{run.flower_url}/api/workers", params={"refresh": 1}, auth=run.flower_auth)())
        and answer.status_code == 200
        and answer.json(),
        timeout=30, interval=0.5, what="Flower's /api/workers to list the worker",
    )  # fmt: skip
    assert list(workers) == [f"erpmax.provisioning@{socket.gethostname()}"], "the worker, named after its queue"
    return job


def assert_every_signal_is_green(run: Run, data_dir: Path) -> None:
    """What an operator would look at: doctor, /readyz and /metrics, all saying the service works."""
    base = run.docs_url.removesuffix("/docs")
    ready = requests.get(f"{base}/readyz", timeout=HTTP_TIMEOUT)
    assert (ready.status_code, ready.json()["status"]) == (200, "ready"), ready.text

    def metrics() -> dict[str, float]:
        text = requests.get(f"{base}/metrics", timeout=HTTP_TIMEOUT).text
        return {name: float(value) for name, _, value in (line.rpartition(" ") for line in text.splitlines()) if name[:1] != "#"}

    # The relay has announced every job event, and the server's standby pool is full (make run keeps two ready).
    ready_standbys = 'erpmax_standby_sites{server="default",status="ready"}'
    figures = wait_for(
        lambda: (found := metrics())["erpmax_job_events_waiting"] == 0 and found[ready_standbys] == 2 and found,
        # A claimed standby site is made up for at the next sweep: SWEEP_INTERVAL_SECONDS is 30.
        timeout=75, interval=0.2, what="the sweeper's relay to announce every job event, and the standby pool to fill",
    )  # fmt: skip
    assert figures['erpmax_standby_pool_size{server="default"}'] == 2
    assert figures["erpmax_broker_up"] == 1
    assert figures['erpmax_queue_messages{queue="erpmax.provisioning"}'] == 0

    doctor = subprocess.run(
        [sys.executable, "-m", "provisioning.cli", "doctor"],
        env=newcomer_environment(data_dir), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = doctor.stdout.strip().splitlines()
    assert doctor.returncode == 0 and len(lines) == 14 and all(line.startswith("ok   ") for line in lines), doctor.stdout


def assert_only_its_user_can_read_its_data(data_dir: Path) -> None:
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert not_private(data_dir) == {}


def stop_with_ctrl_c(run: Run) -> str:
    """Type Ctrl-C as a person would (after a Ctrl-Z, which must not hang the terminal); make must
    exit 0 with every process gone. Returns the whole output."""
    run.terminal.ctrl_z()
    run.terminal.ctrl_c()
    try:
        code = run.terminal.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"make run did not exit within 60 s of Ctrl-C\n{run.terminal.describe()}")
    output = ANSI_COLOUR.sub("", run.terminal.output())
    assert code == 0, f"make run exited {code} after Ctrl-C\n{run.terminal.describe()}"
    assert "make: ***" not in output
    wait_for(lambda: not tagged_processes(run.tag), timeout=10, interval=0.1, what="every process the quickstart started to exit")
    return output


def assert_a_clean_log(output: str) -> None:
    """No warning or worse, and no traceback, from start to stop (the allowed few aside)."""
    loud = [
        line
        for line in output.splitlines()
        if (LOUD_LINE.search(line) or "Traceback" in line) and not any(allowed.search(line) for allowed in ALLOWED_LOUD_LINES)
    ]
    assert loud == [], "\n".join(loud)
    assert "alembic" not in output, "Alembic's chatter at start and at each /readyz"


def test_make_run_works_as_printed_its_signals_are_green_its_log_clean_and_ctrl_c_ends_it_with_exit_0(make_run):
    start, data_dir = make_run
    first = start()
    assert "embedded defaults" in first.terminal.output()
    assert all("http://127.0.0.1:8000/" in line for line in first.curl_lines), first.curl_lines
    assert run_the_printed_job(first)["job_type"] == "create_site"
    assert_every_signal_is_green(first, data_dir)
    assert_only_its_user_can_read_its_data(data_dir)
    assert_a_clean_log(stop_with_ctrl_c(first))

    # A second `make run` keeps the data: the site exists, so the line it prints is one that works now.
    second = start()
    assert run_the_printed_job(second)["job_type"] == "backup_site"
    assert_every_signal_is_green(second, data_dir)
    assert_only_its_user_can_read_its_data(data_dir)  # the backup's files and folders too
    assert_a_clean_log(stop_with_ctrl_c(second))


class Api:
    """The jobs API of a running `make run`, as its banner's token sees it."""

    def __init__(self, run: Run):
        self.terminal = run.terminal
        base = run.docs_url.removesuffix("/docs")
        self.jobs_url = f"{base}/api/v1/provisioning/jobs"
        self.tenant_url = f"{base}/api/v1/tenants/current"
        self.headers = {"Authorization": f"Bearer {run.token}"}

        def answers():
            self.terminal.assert_alive()
            try:
                return requests.get(self.jobs_url, headers=self.headers, timeout=HTTP_TIMEOUT).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(answers, timeout=60, interval=0.2, what="the API to answer")

    def post(self, path: str = "", body: dict | None = None) -> dict:
        response = requests.post(f"{self.jobs_url}{path}", json=body, headers=self.headers, timeout=HTTP_TIMEOUT)
        assert response.status_code == 201, response.text
        return response.json()["data"]

    def get(self, url: str):
        self.terminal.assert_alive()
        response = requests.get(url, headers=self.headers, timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def job(self, job_id: str) -> dict:
        return self.get(f"{self.jobs_url}/{job_id}")

    def steps(self, job_id: str) -> dict[str, dict]:
        return {step["name"]: step for step in self.get(f"{self.jobs_url}/{job_id}/steps")}

    def wait_until_finished(self, job_id: str) -> dict:
        def finished():
            job = self.job(job_id)
            return job if job["status"] in ("completed", "failed", "cancelled") else None

        return wait_for(finished, timeout=60, interval=0.1, what=f"job {job_id} to finish")


def test_ctrl_c_during_a_job_fails_its_step_saying_so_and_the_retry_of_the_next_run_resumes_there(make_run):
    start, _data_dir = make_run
    first = start(step_seconds="3")
    api = Api(first)
    job = api.post(body={"job_type": "create_site"})
    # Past create_site, so the interrupted step is one a retry resumes at.
    wait_for(
        lambda: api.steps(job["id"]).get("install_apps", {}).get("status") == "running",
        timeout=60,
        interval=0.1,
        what="install_apps to run",
    )
    output = stop_with_ctrl_c(first)

    assert "WorkerLostError" not in output and "Traceback" not in output, output[-3000:]
    second = start()
    api = Api(second)
    stopped = api.job(job["id"])
    steps = api.steps(job["id"])
    [interrupted] = [name for name, step in steps.items() if step["status"] == "failed"]
    assert stopped["status"] == "failed", stopped
    reason = rf"worker \S+@\S+ pid \d+ was stopped during step {interrupted}: its process received SIGTERM"
    assert re.fullmatch(reason, stopped["error"]), stopped["error"]
    assert steps[interrupted]["message"] == stopped["error"]
    assert f"job {job['id']}: {stopped['error']}" in output, "the worker says so in one line"
    assert api.get(api.tenant_url)["status"] == "failed", "released as for any failure past create_site"

    retry = api.post(f"/{job['id']}/retry")
    assert retry["resume_from"] == interrupted
    assert api.wait_until_finished(retry["id"])["status"] == "completed"
    statuses = [step["status"] for step in api.get(f"{api.jobs_url}/{retry['id']}/steps")]
    position = list(steps).index(interrupted)
    assert statuses == ["skipped"] * position + ["completed"] * (len(steps) - position)
    stop_with_ctrl_c(second)


def test_the_quickstart_refuses_in_one_line_to_start_when_a_port_it_needs_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = newcomer_environment(
            tmp_path / "data", PORT=str(port), FLOWER_PORT=str(free_port()), EMBEDDED_BROKER_PORT=str(free_port())
        )
        result = subprocess.run(
            [sys.executable, "-m", "provisioning.cli", "quickstart"],
            env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: port {port} (PORT) is taken by another program: stop it, or set PORT to a free port"
    ]
    assert "erpx_" not in result.stdout, "no banner, no token, for a run that cannot start"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_the_quickstart_alone_stops_every_process_it_started(tmp_path, stop):
    """As a process manager or `kill -INT` stops it: the signal reaches the quickstart, not its
    whole group (as Ctrl-C in a terminal would)."""
    tag, port = new_tag(), free_port()
    env = newcomer_environment(
        tmp_path / "data", PORT=str(port), FLOWER_PORT=str(free_port()), EMBEDDED_BROKER_PORT=str(free_port()),
        **{TAG_VARIABLE: tag},
    )  # fmt: skip
    quickstart = GroupProcess("quickstart", [sys.executable, "-m", "provisioning.cli", "quickstart"], env, tmp_path / "log")
    try:

        def web_answers() -> bool:
            quickstart.assert_alive()
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=HTTP_TIMEOUT).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(web_answers, timeout=60, interval=0.2, what="the quickstart's web process to answer")
        quickstart.process.send_signal(stop)
        assert quickstart.process.wait(timeout=30) == 0
        wait_for(lambda: not tagged_processes(tag), timeout=15, interval=0.1, what="every process it started to exit")
    finally:
        kill_tagged(tag)
        print(quickstart.describe())
