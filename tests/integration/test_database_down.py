"""The database out of reach: a worker keeps the job it received, and the API answers 503."""

import pytest
import requests
from sqlalchemy import create_engine, pool, select, text
from sqlalchemy.exc import OperationalError

from api import create_app
from provisioning.backups.book import retention_of
from provisioning.backups.steps import BackupSteps
from provisioning.enums import JobStatus, JobType, StepStatus, TenantStatus
from provisioning.jobs.runner import JobRunner
from provisioning.messaging.broker import Dispatcher
from provisioning.models import JobStep, ProvisioningJob
from provisioning.platform.db import get_engine
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.factories import TenantFactory
from tests.helpers import committing, wait_for
from tests.records import made_without_a_standby_site
from tests.stack import ADMIN_DATABASE_URL, WebProcess, WorkerProcess, delete_queues

pytestmark = pytest.mark.disruptive  # kills database connections and times the outage

HTTP_TIMEOUT = 10

CLOSED_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def test_a_job_received_while_the_database_is_unreachable_runs_when_a_worker_can_reach_it(
    environment, settings, session, sessions, tenant_factory
):
    # A queue of this test's own, so the run's shared worker cannot take the job first.
    queue = f"{settings.provisioning_queue_name}.database-down"
    own_settings = settings.model_copy(update={"provisioning_queue_name": queue})
    dispatcher = Dispatcher(own_settings)
    tenant = tenant_factory.create()
    job = committing(session, dispatch=dispatcher.send_job).request_job(tenant.id, JobType.CREATE_SITE)

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
    client = create_app(settings.model_copy(update={"database_url": CLOSED_DATABASE})).test_client()
    for method, path in (("get", "/api/v1/provisioning/jobs"), ("post", "/api/v1/provisioning/jobs")):
        response = getattr(client, method)(path, json={"job_type": "create_site"}, headers={"Authorization": "Bearer erpx_x"})
        assert response.status_code == 503
        assert response.json == {
            "code": 503,
            "status": "Service Unavailable",
            "message": "the database is unavailable; try again shortly",
        }


class DatabaseOutage:
    """Cuts one database off for a while, as a PostgreSQL restart or fail-over would: its server
    processes are killed, and new connections are refused until ``end()``."""

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.name = database_url.rsplit("/", 1)[1]
        self.admin = create_engine(ADMIN_DATABASE_URL, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")

    def kill_connections(self, including_the_tests: bool = True) -> int:
        """Kill every connection to the database, waiting until each server process is gone (so
        each socket has the server's goodbye waiting); the test's own pooled ones are dropped
        too, unless the test means to meet them dead."""
        with self.admin.connect() as connection:
            killed = connection.execute(
                text("SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE datname = :name"),
                {"name": self.name},
            ).scalar()
        if including_the_tests:
            get_engine(self.database_url).dispose()
        return killed

    def begin(self) -> None:
        with self.admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false'))
        self.kill_connections()

    def end(self) -> None:
        with self.admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true'))


def test_a_running_job_rides_out_a_database_outage_and_the_worker_goes_on_without_a_restart(isolated):
    with isolated.session() as session:
        first, second = TenantFactory(session).create(), TenantFactory(session).create()
        job = committing(session, dispatch=isolated.dispatcher.send_job).request_job(first.id, JobType.CREATE_SITE)
    outage = DatabaseOutage(isolated.settings.database_url)
    # Steps longer than the runner's step write interval: each is on record while it runs.
    worker = WorkerProcess({**isolated.environment, "SIMULATED_STEP_SECONDS": "1.5"}, isolated.dispatcher, concurrency=1)

    def step_running(name: str) -> bool:
        with isolated.sessions() as s:
            return s.scalar(select(JobStep.status).where(JobStep.job_id == job.id, JobStep.name == name)) == StepStatus.RUNNING

    def status(job_id):
        with isolated.sessions() as s:
            return s.scalar(select(ProvisioningJob.status).where(ProvisioningJob.id == job_id))

    try:
        wait_for(lambda: step_running("create_site"), timeout=30, what="step create_site to run")
        assert outage.kill_connections() >= 1  # a blip: the worker's next query reconnects

        wait_for(lambda: step_running("configure_site"), timeout=30, what="step configure_site to run")
        outage.begin()  # an outage: the worker's writes fail until it ends
        try:
            wait_for(
                lambda: "database unavailable during" in worker.output(), timeout=30, what="the worker to wait out the outage"
            )
        finally:
            outage.end()

        wait_for(lambda: status(job.id) == JobStatus.COMPLETED, timeout=60, what="the job to complete after the outage")
        with isolated.sessions() as s:
            steps = s.scalars(select(JobStep).where(JobStep.job_id == job.id)).all()
        assert [step.status for step in made_without_a_standby_site(steps)] == [StepStatus.COMPLETED] * 5

        with isolated.session() as session:
            later = committing(session, dispatch=isolated.dispatcher.send_job).request_job(
                second.id, JobType.CREATE_SITE
            )
        wait_for(lambda: status(later.id) == JobStatus.COMPLETED, timeout=60, what="the next job, on the same worker")
        assert worker.process.poll() is None
    finally:
        outage.end()
        worker.stop()


@pytest.fixture
def gunicorn(isolated, tmp_path):
    """The Procfile's web process on the test's own database, one worker (all its connections in one pool)."""
    web = WebProcess(isolated.environment, tmp_path / "web.log", WEB_CONCURRENCY="1")
    try:
        yield web
    finally:
        web.stop()


def test_a_request_right_after_the_api_s_connections_were_killed_answers_normally(isolated, gunicorn):
    """The database is up: a dead pooled connection is replaced for the statement that found it, no 503."""
    web = gunicorn
    with isolated.session() as session:
        tenant = TenantFactory(session).create()
    outage = DatabaseOutage(isolated.settings.database_url)
    jobs = f"{web.url}/api/v1/provisioning/jobs"
    statuses = []
    for _ in range(5):
        # The connection was just used, and is dead now: the check at checkout replaces it.
        assert requests.get(jobs, headers=tenant.headers(), timeout=HTTP_TIMEOUT).status_code == 200
        assert outage.kill_connections(including_the_tests=False) >= 1
        statuses.append(requests.get(jobs, headers=tenant.headers(), timeout=HTTP_TIMEOUT).status_code)

    assert statuses == [200] * 5
    assert "a pooled database connection was dead" in web.group.output()


def test_a_job_whose_worker_s_connections_are_killed_mid_step_completes_without_waiting(isolated, caplog):
    """The runner's own connection and the pooled one the backup steps just used are dead after the
    kill: the write that meets one runs again at once on a new connection, so no step fails and no
    write waits out an outage."""

    class KillsConnectionsAsItVerifies(BackupSteps):
        def run(self, step, job_id, tenant_id, options):
            if step == "verify_backup":
                assert DatabaseOutage(isolated.settings.database_url).kill_connections(including_the_tests=False) >= 1
            return super().run(step, job_id, tenant_id, options)

    with isolated.session() as session:
        tenant = TenantFactory(session).create(status=TenantStatus.ACTIVE)
        job = committing(session).request_job(tenant.id, JobType.BACKUP_SITE)
    runner = JobRunner.for_settings(isolated.settings, isolated.sessions, SimulatedDriver(0), "worker@test")
    runner.platform_steps.backup_steps = KillsConnectionsAsItVerifies(isolated.sessions, retention_of(isolated.settings))

    runner.run(job.id)

    with isolated.sessions() as session:
        finished = session.get(ProvisioningJob, job.id)
        steps = session.scalars(select(JobStep).where(JobStep.job_id == job.id)).all()
    assert (finished.status, finished.error) == (JobStatus.COMPLETED, None)
    assert [step.status for step in steps] == [StepStatus.COMPLETED] * 4
    assert "database unavailable" not in caplog.text


def test_a_dead_pooled_connection_is_checked_at_checkout_and_replaced(isolated):
    """As a restarted PostgreSQL leaves them: even a first round trip that could not run again
    (a COMMIT) meets a live connection."""
    engine = get_engine(isolated.settings.database_url)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    DatabaseOutage(isolated.settings.database_url).kill_connections(including_the_tests=False)

    raw = engine.raw_connection()  # the driver's connection itself: nothing of SQLAlchemy's statement handling
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    finally:
        raw.close()


def test_a_statement_later_in_a_transaction_that_meets_a_dead_connection_fails_and_is_never_run_twice(isolated):
    """Its transaction's earlier statements died with the connection: running it alone on a new
    one would commit half a transaction, so its error stands."""
    with get_engine(isolated.settings.database_url).connect() as connection:
        connection.execute(text("SELECT 1"))  # the transaction is open on the server now
        DatabaseOutage(isolated.settings.database_url).kill_connections(including_the_tests=False)
        with pytest.raises(OperationalError) as failure:
            connection.execute(text("SELECT 2"))
    assert failure.value.connection_invalidated
