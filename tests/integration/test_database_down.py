"""The database out of reach: a worker keeps the job it received, and the API answers 503."""

from dataclasses import replace

from sqlalchemy import select

from api import create_app
from provisioning.broker import Dispatcher
from provisioning.enums import JobStatus, JobType
from provisioning.models import ProvisioningJob
from provisioning.service import ProvisioningService
from tests.helpers import wait_for
from tests.integration.conftest import WorkerProcess, delete_queues

CLOSED_DATABASE = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"


def test_a_job_received_while_the_database_is_unreachable_runs_when_a_worker_can_reach_it(
    environment, settings, session, sessions, tenant_factory
):
    # A queue of this test's own, so the run's shared worker cannot take the job first.
    queue = f"{settings.provisioning_queue_name}.database-down"
    own_settings = replace(settings, provisioning_queue_name=queue)
    dispatcher = Dispatcher(own_settings)
    tenant = tenant_factory.create()
    job = ProvisioningService(session, dispatch=dispatcher.send_job).request_job(tenant.id, JobType.CREATE_SITE)

    cut_off = WorkerProcess({**environment, "PROVISIONING_QUEUE_NAME": queue, "DATABASE_URL": CLOSED_DATABASE}, dispatcher)
    try:
        wait_for(lambda: "database unavailable" in cut_off.output(), timeout=30, what="the worker to find the database down")
    finally:
        cut_off.stop()

    with sessions() as s:
        assert s.scalar(select(ProvisioningJob.status).where(ProvisioningJob.id == job.id)) == JobStatus.PENDING
    healthy = WorkerProcess({**environment, "PROVISIONING_QUEUE_NAME": queue}, dispatcher)
    try:

        def status():
            with sessions() as s:
                return s.scalar(select(ProvisioningJob.status).where(ProvisioningJob.id == job.id))

        wait_for(lambda: status() == JobStatus.COMPLETED, timeout=60, what="the job to complete once the database answers")
    finally:
        healthy.stop()
        delete_queues(queue)


def test_the_api_answers_503_in_the_error_shape_while_its_database_is_unreachable(settings):
    client = create_app(replace(settings, database_url=CLOSED_DATABASE)).test_client()
    for method, path in (("get", "/api/v1/provisioning/jobs"), ("post", "/api/v1/provisioning/jobs")):
        response = getattr(client, method)(path, json={"job_type": "create_site"}, headers={"Authorization": "Bearer erpx_x"})
        assert response.status_code == 503
        assert response.json == {
            "code": 503,
            "status": "Service Unavailable",
            "message": "the database is unavailable; try again shortly",
        }
