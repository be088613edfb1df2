"""The Procfile's own web, worker, sweeper and Flower lines, run as separate processes, take a site
from creation through a backup to deletion over HTTP."""

from __future__ import annotations

import json
import re
import socket
import uuid

import pytest
import requests

from provisioning.enums import JobType, Role
from provisioning.jobs.workflows import workflow_for
from provisioning.platform.settings import load_settings
from tests.helpers import wait_for
from tests.processes import (
    TAG_VARIABLE,
    TASK_EVENTS_ON,
    GroupProcess,
    free_port,
    kill_tagged,
    new_tag,
    procfile_commands,
    stop_all,
    tagged_processes,
)
from tests.records import NO_STANDBY
from tests.stack import delete_queues, events_heard, process_environment

FLOWER_AUTH = ("user", "password")
# Celery prints this to standard output itself, not through logging.
CELERY_NOTICE = re.compile(r"^worker: (Warm|Cold) shutdown \(MainProcess\)$")
WORKER_NAME = f"e2e-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
HTTP_TIMEOUT = 10
FINISHED = ("completed", "failed", "cancelled")


class ProcfileStack:
    """The three Procfile processes of one test, and how to talk to them."""

    def __init__(self, processes: dict[str, GroupProcess], port: int, flower_port: int, queue: str, tag: str):
        self.processes = processes
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.base_url}/api/v1"
        self.flower_url = f"http://127.0.0.1:{flower_port}"
        self.queue = queue
        self.tag = tag

    def assert_alive(self) -> None:
        for process in self.processes.values():
            process.assert_alive()

    def flower(self, path: str, **params) -> dict:
        response = requests.get(f"{self.flower_url}{path}", params=params, auth=FLOWER_AUTH, timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, f"Flower {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def wait_until_ready(self) -> None:
        """Gunicorn answers, and Flower reaches the worker, receives its events and has turned its task events on."""

        def answers(probe):
            def attempt():
                self.assert_alive()
                try:
                    return probe()
                except requests.ConnectionError:
                    return False

            return attempt

        wait_for(
            answers(lambda: requests.get(f"{self.base_url}/openapi.json", timeout=HTTP_TIMEOUT).status_code == 200),
            timeout=60, interval=0.2, what="gunicorn to answer /openapi.json",
        )  # fmt: skip
        wait_for(
            answers(lambda: WORKER_NAME in self.flower("/api/workers", refresh=1)),
            timeout=60, interval=0.5, what=f"Flower's /api/workers to list {WORKER_NAME}",
        )  # fmt: skip
        wait_for(
            answers(lambda: self.flower("/api/workers", status=1).get(WORKER_NAME) is True),
            timeout=30, interval=0.2, what=f"Flower to receive {WORKER_NAME}'s events",
        )  # fmt: skip
        wait_for(
            answers(lambda: TASK_EVENTS_ON in self.processes["worker"].output()),
            timeout=30, interval=0.2, what=f"Flower to turn {WORKER_NAME}'s task events on",
        )  # fmt: skip

    def run_job(self, job_type: str, headers: dict[str, str]) -> dict:
        """Request a job, follow it until it finishes, and check its progress only went up, to 100."""
        response = requests.post(
            f"{self.api_url}/provisioning/jobs", json={"job_type": job_type}, headers=headers, timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 201, response.text
        assert response.headers["X-Request-ID"] == headers.get("X-Request-ID", response.headers["X-Request-ID"])
        job_id = response.json()["data"]["id"]
        progress_seen = []

        def finished():
            self.assert_alive()
            job = self.get(f"/provisioning/jobs/{job_id}", headers)
            progress_seen.append(job["progress"])
            return job if job["status"] in FINISHED else None

        job = wait_for(finished, timeout=60, interval=0.1, what=f"{job_type} job {job_id} to finish")
        assert job["status"] == "completed", job
        assert progress_seen == sorted(progress_seen), f"progress went down: {progress_seen}"
        assert progress_seen[-1] == 100
        return job

    def get(self, path: str, headers: dict[str, str]):
        response = requests.get(f"{self.api_url}{path}", headers=headers, timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()["data"]

    def tenant_status(self, headers: dict[str, str]) -> str:
        return self.get("/tenants/current", headers)["status"]

    def metrics(self) -> dict[str, float]:
        response = requests.get(f"{self.base_url}/metrics", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, response.text
        return {
            sample: float(value)
            for sample, _, value in (line.rpartition(" ") for line in response.text.splitlines() if not line.startswith("#"))
        }

    def log_lines(self, name: str) -> list[dict]:
        """The process's log, each line a JSON object; Celery's one plain shutdown notice aside."""
        lines = []
        for line in self.processes[name].output().splitlines():
            if line.strip() and not CELERY_NOTICE.match(line):
                lines.append(json.loads(line))
        return lines


@pytest.fixture
def procfile_stack(environment, tmp_path):
    """web, worker and flower started from the Procfile's lines, on a queue no other worker of this run reads."""
    tag = new_tag()
    # The session's `worker` fixture consumes the per-run queue; jobs must reach the Procfile's worker only.
    queue = f"{environment['PROVISIONING_QUEUE_NAME']}.end-to-end"
    port, flower_port = free_port(), free_port()
    env = process_environment(
        {
            **environment,
            "PROVISIONING_QUEUE_NAME": queue,
            "PORT": str(port),
            "FLOWER_PORT": str(flower_port),
            "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
            "DATA_DIR": str(tmp_path / "data"),
            "WORKER_NAME": WORKER_NAME,
            "SIMULATED_STEP_SECONDS": "0.2",
            "WEB_CONCURRENCY": "2",  # /metrics must add up what both workers counted
            TAG_VARIABLE: tag,
        }
    )
    commands = procfile_commands()
    processes: dict[str, GroupProcess] = {}
    try:
        for name in ("web", "worker", "sweeper", "flower"):
            processes[name] = GroupProcess(name, commands[name], env, tmp_path / f"{name}.log")
        yield ProcfileStack(processes, port, flower_port, queue, tag)
    finally:
        stop_all(processes)
        kill_tagged(tag)
        for process in processes.values():
            print(process.describe())  # shown by pytest when the test failed
        delete_queues(queue)


def test_the_procfile_processes_create_back_up_and_delete_a_site_over_http(procfile_stack, tenant_factory, environment):
    stack = procfile_stack
    stack.wait_until_ready()
    assert requests.get(f"{stack.flower_url}/api/workers", timeout=HTTP_TIMEOUT).status_code == 401, (
        "Flower must require its basic auth"
    )
    tenant = tenant_factory.create(roles=(Role.OWNER,))
    headers = tenant.headers(Role.OWNER)
    before = stack.metrics()
    request_id = f"e2e-{uuid.uuid4().hex}"

    with events_heard(load_settings({**environment, "PROVISIONING_QUEUE_NAME": stack.queue})) as (hear, heard):
        created = stack.run_job("create_site", {**headers, "X-Request-ID": request_id})
        assert stack.tenant_status(headers) == "active"
        backed_up = stack.run_job("backup_site", headers)
        assert stack.tenant_status(headers) == "active"
        deleted = stack.run_job("delete_site", headers)
        assert stack.tenant_status(headers) == "deleted"
        # The sweeper relays each status change to the events exchange, as billing would hear it.
        hear(lambda event: event["job_id"] == deleted["id"] and event["status"] == "completed")
    of_create = [m.payload for m in heard if m.payload["job_id"] == created["id"]]
    assert [(event["event"], event["actor"].split(" pid ")[0]) for event in of_create] == [
        ("created", f"user {tenant.users[Role.OWNER].id}"), ("claimed", f"worker {WORKER_NAME}"),
        ("completed", f"worker {WORKER_NAME}"),
    ]  # fmt: skip

    jobs = [created, backed_up, deleted]
    listed = stack.get("/provisioning/jobs", headers)
    assert [job["id"] for job in listed] == [deleted["id"], backed_up["id"], created["id"]], "newest first"
    for job in jobs:
        assert job["worker"].startswith(f"{WORKER_NAME} pid ")
        steps = stack.get(f"/provisioning/jobs/{job['id']}/steps", headers)
        assert [step["name"] for step in steps] == list(workflow_for(JobType(job["job_type"])).step_names)
        # Every step completed but the create's claim_standby, skipped: no standby site was ready, the site was made.
        not_completed = [(step["name"], step["status"], step["message"]) for step in steps if step["status"] != "completed"]
        assert not_completed == ([("claim_standby", "skipped", NO_STANDBY)] if job is created else []), steps

    def flower_saw_them_succeed():
        tasks = stack.flower("/api/tasks")
        return all(tasks.get(job["id"], {}).get("state") == "SUCCESS" for job in jobs) and tasks

    tasks = wait_for(flower_saw_them_succeed, timeout=30, interval=0.2, what="Flower to report the three tasks as SUCCESS")
    for job in jobs:
        assert tasks[job["id"]]["worker"] == WORKER_NAME
        assert tasks[job["id"]]["name"] == "provisioning.run_job"
    worker = stack.flower("/api/workers", refresh=1)[WORKER_NAME]
    assert [queue["name"] for queue in worker["active_queues"]] == [stack.queue]

    after = stack.metrics()
    posts = 'erpmax_http_requests_total{method="POST",route="/api/v1/provisioning/jobs",status="201"}'
    assert after.get(posts, 0) - before.get(posts, 0) == 3, "each gunicorn worker's count must be in the sum"
    done = 'erpmax_jobs_finished_total{job_type="create_site",status="completed"}'
    assert after[done] >= before.get(done, 0) + 1

    stopped_by_themselves = stop_all(stack.processes)
    assert stopped_by_themselves == {"web": True, "worker": True, "sweeper": True, "flower": True}, "SIGTERM must stop all"
    assert tagged_processes(stack.tag) == [], "a process of the stack outlived its group's SIGTERM"

    # One search for the request id finds the HTTP call and the worker's lines of the job it made.
    lines = {name: stack.log_lines(name) for name in ("web", "worker", "sweeper")}
    of_request = [(name, line) for name, found in lines.items() for line in found if line.get("request_id") == request_id]
    assert any(name == "web" and line["message"].startswith("POST /api/v1/provisioning/jobs 201") for name, line in of_request)
    assert any(name == "web" and line.get("job_id") == created["id"] for name, line in of_request), "the API names the job"
    in_worker = [line for name, line in of_request if name == "worker"]
    assert {line["job_id"] for line in in_worker} == {created["id"]}
    ran = set(workflow_for(JobType.CREATE_SITE).step_names) - {"claim_standby"}  # a skipped step logs nothing
    assert {line.get("step") for line in in_worker} >= ran
    assert any(line["message"] == f"job {created['id']}: completed" for line in in_worker)
    assert all(line["tenant_id"] == str(tenant.id) and line["job_type"] == "create_site" for line in in_worker)
    secrets = (headers["Authorization"].removeprefix("Bearer "), FLOWER_AUTH[1], environment["SITE_CREDENTIALS_KEY"])
    for process in stack.processes.values():
        assert not [secret for secret in secrets if secret in process.output()]
