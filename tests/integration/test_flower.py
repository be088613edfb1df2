"""Flower in production shape: bounded memory, and its task history kept across a restart."""

import requests

from provisioning.enums import JobStatus, JobType
from provisioning.models import ProvisioningJob
from tests.helpers import committing, wait_for
from tests.processes import TASK_EVENTS_ON, GroupProcess, free_port, procfile_commands
from tests.stack import process_environment

AUTH = ("ops", "secret")


def flower_tasks(flower: GroupProcess, port: int) -> dict | None:
    """Flower's task list, or None while it does not answer yet."""
    flower.assert_alive()
    try:
        response = requests.get(f"http://127.0.0.1:{port}/api/tasks", auth=AUTH, timeout=5)
    except requests.ConnectionError:
        return None
    return response.json() if response.status_code == 200 else None


def test_flower_keeps_its_task_history_across_a_restart_when_given_a_path(
    environment, worker, dispatcher, session, sessions, tenant_factory, tmp_path
):
    port = free_port()
    env = process_environment(
        {
            **environment,
            "FLOWER_PORT": str(port),
            "FLOWER_BASIC_AUTH": ":".join(AUTH),
            "FLOWER_PERSISTENT": "true",
            "FLOWER_DB": str(tmp_path / "flower.db"),
            "FLOWER_MAX_TASKS": "50",
        }
    )
    flowers = []

    def start_flower() -> GroupProcess:
        flowers.append(GroupProcess("flower", procfile_commands()["flower"], env, tmp_path / f"flower-{len(flowers)}.log"))
        wait_for(lambda: flower_tasks(flowers[-1], port) is not None, timeout=60, interval=0.3, what="Flower to answer")
        return flowers[-1]

    try:
        first = start_flower()
        wait_for(lambda: TASK_EVENTS_ON in worker.output(), timeout=30, interval=0.3, what="Flower to turn task events on")
        tenant = tenant_factory.create()
        job = committing(session, dispatch=dispatcher.send_job).request_job(tenant.id, JobType.CREATE_SITE)

        def job_status():
            with sessions() as s:
                return s.get(ProvisioningJob, job.id).status

        wait_for(lambda: job_status() == JobStatus.COMPLETED, timeout=30, what="the job to complete")
        wait_for(lambda: str(job.id) in flower_tasks(first, port), timeout=30, interval=0.3, what="Flower to see the task")
        assert first.stop() is True, "Flower stops by itself on SIGTERM, saving its state"

        second = start_flower()
        assert flower_tasks(second, port)[str(job.id)]["state"] == "SUCCESS"
    finally:
        for flower in flowers:
            flower.stop()
