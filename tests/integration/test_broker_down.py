"""Jobs requested while the broker is unreachable are kept, and published once it is back."""

import time

from click.testing import CliRunner
from sqlalchemy import func, select

from api import create_app
from provisioning.cli import main
from provisioning.enums import JobStatus, Role
from provisioning.models import ProvisioningJob
from tests.factories import TenantFactory
from tests.helpers import wait_for
from tests.stack import WorkerProcess

CLOSED_BROKER = "amqp://guest:guest@127.0.0.1:1//"


def test_creates_while_the_broker_is_down_are_accepted_then_swept_to_the_queue_and_run(isolated):
    client = create_app(isolated.settings.model_copy(update={"broker_url": CLOSED_BROKER})).test_client()
    with isolated.session() as session:
        tenants = [TenantFactory(session).create() for _ in range(3)]

    answers = []
    for tenant in tenants:
        started = time.monotonic()
        response = client.post("/api/v1/provisioning/jobs", json={"job_type": "create_site"}, headers=tenant.headers(Role.OWNER))
        answers.append((response, time.monotonic() - started))

    for response, elapsed in answers:
        assert response.status_code == 201
        assert elapsed < 10, f"a create took {elapsed:.1f}s with the broker down"
        job = response.json["data"]
        assert (job["status"], job["queued"], job["dispatched_at"]) == ("pending", False, None)

    result = CliRunner().invoke(main, ["jobs", "sweep"], env=isolated.environment)
    assert result.exit_code == 0 and "published 3 pending job(s) again" in result.output

    def completed() -> int:
        with isolated.sessions() as session:
            return session.scalar(
                select(func.count()).select_from(ProvisioningJob).where(ProvisioningJob.status == JobStatus.COMPLETED)
            )

    worker = WorkerProcess(isolated.environment, isolated.dispatcher, concurrency=1)
    try:
        wait_for(lambda: completed() == 3, timeout=60, what="the swept jobs to complete")
    finally:
        worker.stop()
