"""A job requested while the broker is unreachable is kept, and published once it is back."""

import time
from dataclasses import replace

from click.testing import CliRunner
from sqlalchemy import select

from api import create_app
from provisioning.cli import main
from provisioning.enums import JobStatus, Role
from provisioning.models import ProvisioningJob
from tests.helpers import wait_for

CLOSED_BROKER = "amqp://guest:guest@127.0.0.1:1//"


def test_a_create_while_the_broker_is_down_is_accepted_then_republished_and_run(
    settings, environment, tenant_factory, sessions, worker
):
    client = create_app(replace(settings, broker_url=CLOSED_BROKER)).test_client()
    tenant = tenant_factory.create()

    started = time.monotonic()
    response = client.post("/api/v1/provisioning/jobs", json={"job_type": "create_site"}, headers=tenant.headers(Role.OWNER))
    elapsed = time.monotonic() - started

    assert response.status_code == 201
    assert elapsed < 10, f"the create took {elapsed:.1f}s with the broker down"
    job = response.json["data"]
    assert (job["status"], job["queued"], job["dispatched_at"]) == ("pending", False, None)

    result = CliRunner().invoke(main, ["jobs", "sweep"], env=environment)
    assert result.exit_code == 0 and "published 1 pending job(s) again" in result.output

    def status():
        with sessions() as session:
            return session.scalar(select(ProvisioningJob.status).where(ProvisioningJob.id == job["id"]))

    wait_for(lambda: status() == JobStatus.COMPLETED, timeout=30, what="the republished job to complete")
