"""`provisioning quickstart` on its embedded defaults (SQLite and the embedded broker, no PostgreSQL
or RabbitMQ) serves the API, runs the job its banner prints, shows Flower, and stops every process
on Ctrl-C; run again, it keeps its data and prints a job that works then."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.helpers import wait_for
from tests.processes import (
    TAG_VARIABLE,
    GroupProcess,
    free_port,
    kill_tagged,
    new_tag,
    tagged_processes,
)

HTTP_TIMEOUT = 10
TOKEN_LINE = re.compile(r"^\s+(erpx_\S+)\s*$", re.MULTILINE)
CURL_LINE = re.compile(r"curl -s -X POST (\S+) .* -d '(\{.*\})'")
DOCS_LINE = re.compile(r"API docs:\s+(\S+)")
FLOWER_LINE = re.compile(r"Flower:\s+(\S+)\s+\(user (\S+), password (\S+)\)")
# Anything that would point the quickstart at PostgreSQL, RabbitMQ or settings of another run.
NOT_INHERITED = {
    "database_url",
    "provisioning_queue_name",
    "data_dir",
    "flower_basic_auth",
    "port",
    "flower_port",
    "embedded_broker_port",
}
NOT_INHERITED_PREFIXES = ("rabbitmq_", "simulated_")


@dataclass
class Quickstart:
    process: GroupProcess
    data_dir: Path
    broker_port: int
    tag: str


def _embedded_environment(extra: dict[str, str]) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in NOT_INHERITED and not key.lower().startswith(NOT_INHERITED_PREFIXES)
    }
    env.update(extra)
    return env


@pytest.fixture
def start_quickstart(tmp_path):
    """Starts `provisioning quickstart` runs that share one data directory, as `make run` does twice."""
    data_dir = tmp_path / "data"
    started: list[Quickstart] = []

    def start() -> Quickstart:
        tag = new_tag()
        broker_port = free_port()
        env = _embedded_environment(
            {
                "DATA_DIR": str(data_dir),
                "PORT": str(free_port()),
                "FLOWER_PORT": str(free_port()),
                "EMBEDDED_BROKER_PORT": str(broker_port),
                "SIMULATED_STEP_SECONDS": "0.2",
                TAG_VARIABLE: tag,
            }
        )
        command = [sys.executable, "-m", "provisioning.cli", "quickstart"]
        process = GroupProcess("quickstart", command, env, tmp_path / f"quickstart-{len(started)}.log")
        started.append(Quickstart(process, data_dir, broker_port, tag))
        return started[-1]

    try:
        yield start
    finally:
        for quickstart in started:
            # Honcho starts web, worker and flower in sessions of their own: the tag finds them.
            quickstart.process.stop(signal.SIGKILL, timeout=10)
            kill_tagged(quickstart.tag)
            print(quickstart.process.describe())  # shown by pytest when the test failed


def run_the_printed_job(quickstart: Quickstart) -> dict:
    """Read the banner, send the job its curl line shows, and return the job once it finished."""
    process = quickstart.process

    def banner():
        process.assert_alive()
        output = process.output()
        found = [pattern.search(output) for pattern in (TOKEN_LINE, CURL_LINE, DOCS_LINE, FLOWER_LINE)]
        return found if all(found) else None

    token_line, curl_line, docs_line, flower_line = wait_for(banner, timeout=60, interval=0.1, what="the quickstart's banner")
    token, jobs_url, docs_url = token_line.group(1), curl_line.group(1), docs_line.group(1)
    body = json.loads(curl_line.group(2))
    flower_url, flower_auth = flower_line.group(1), (flower_line.group(2), flower_line.group(3))
    headers = {"Authorization": f"Bearer {token}"}
    assert "embedded defaults" in process.output()

    def answers(url: str, **kwargs):
        def attempt():
            process.assert_alive()
            try:
                return requests.get(url, timeout=HTTP_TIMEOUT, **kwargs)
            except requests.ConnectionError:
                return None

        return attempt

    docs = wait_for(answers(docs_url), timeout=60, interval=0.2, what=f"{docs_url} to answer")
    assert docs.status_code == 200

    response = requests.post(jobs_url, json=body, headers=headers, timeout=HTTP_TIMEOUT)
    assert response.status_code == 201, response.text
    job_id = response.json()["data"]["id"]

    def job_finished():
        process.assert_alive()
        response = requests.get(f"{jobs_url}/{job_id}", headers=headers, timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, response.text
        job = response.json()["data"]
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    job = wait_for(job_finished, timeout=60, interval=0.1, what=f"job {job_id} to finish")
    assert (job["status"], job["progress"]) == ("completed", 100), job

    def flower_lists_a_worker():
        response = answers(f"{flower_url}/api/workers", params={"refresh": 1}, auth=flower_auth)()
        return response is not None and response.status_code == 200 and response.json()

    workers = wait_for(flower_lists_a_worker, timeout=30, interval=0.5, what="Flower's /api/workers to list a worker")
    assert [name.split("@")[0] for name in workers] == ["erpmax.provisioning"], "the worker, named after its queue"
    output = process.output()
    assert f"Connected to redis://:**@127.0.0.1:{quickstart.broker_port}/0" in output, "the worker must use the embedded broker"
    assert "amqp://" not in output
    return job


def stop_with_ctrl_c(quickstart: Quickstart) -> None:
    process = quickstart.process
    process.signal_group(signal.SIGINT)  # what Ctrl-C in the terminal does
    try:
        process.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the quickstart did not exit within 30 s of Ctrl-C\n{process.describe()}")
    process.wait_until_group_is_gone(timeout=10)
    wait_for(
        lambda: not tagged_processes(quickstart.tag),
        timeout=10,
        interval=0.1,
        what="every process the quickstart started to exit",
    )


def test_quickstart_on_embedded_defaults_runs_the_printed_job_and_ctrl_c_stops_every_process(start_quickstart):
    first = start_quickstart()
    assert run_the_printed_job(first)["job_type"] == "create_site"
    stop_with_ctrl_c(first)
    assert (first.data_dir / "provisioning.sqlite3").is_file()

    # A second `make run` keeps the data: the site exists, so the line it prints is one that works now.
    second = start_quickstart()
    assert run_the_printed_job(second)["job_type"] == "backup_site"
    stop_with_ctrl_c(second)
