"""Integration fixtures: a PostgreSQL database and RabbitMQ queues of this run's own, and a real worker.

Every run (every pytest-xdist worker) creates a database ``provisioning_test_<random>`` migrated
with Alembic and queues ``erpmax.provisioning.test-<random>``, so runs never collide; both are
removed at the end. Tests isolate their data by making tenants of their own, which also lets a
real worker (a separate process) see what a test committed. A test whose data no other
connection needs to see asks for ``rolled_back`` instead, and leaves nothing behind.
"""

from __future__ import annotations

import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from sqlalchemy.orm import Session, sessionmaker

from provisioning.jobs.runner import JobRunner
from provisioning.messaging.broker import Dispatcher
from provisioning.platform.db import get_engine, session_factory
from provisioning.platform.settings import Settings, load_settings
from provisioning.sites import credentials
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests import factories
from tests.rabbitmq_node import RabbitMQNode
from tests.s3_server import S3Server
from tests.stack import (
    ADMIN_DATABASE_URL,
    RABBITMQ_URL,
    RUN_ID,
    WebProcess,
    WorkerProcess,
    delete_queues,
    events_heard,
    migrated_database,
)

HOW_TO_START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "RabbitMQ": "rabbitmq-server -detached",
}


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def real_services_answer() -> None:
    """Stop the whole run at once, with one line saying how to start what is missing."""
    for name, url, port in (("PostgreSQL", ADMIN_DATABASE_URL, 5432), ("RabbitMQ", RABBITMQ_URL, 5672)):
        if not _answers(url, port):
            pytest.exit(f"{name} is not answering at {urlsplit(url).netloc}; start it with: {HOW_TO_START[name]}", returncode=3)


@pytest.fixture(scope="session")
def database_url() -> str:
    with migrated_database(f"provisioning_test_{RUN_ID}") as url:
        yield url


@pytest.fixture(scope="session")
def environment(database_url: str, tmp_path_factory) -> dict[str, str]:
    """The environment of this run's service processes (workers, gunicorn, Flower)."""
    return {
        "DATABASE_URL": database_url,
        "RABBITMQ_URL": RABBITMQ_URL,
        "PROVISIONING_QUEUE_NAME": f"erpmax.provisioning.test-{RUN_ID}",
        "SIMULATED_STEP_SECONDS": "0",
        "SITE_CREDENTIALS_KEY": credentials.new_key(),
        # Off, or every sweep would put backup jobs on the tenants of unrelated tests.
        "BACKUP_INTERVAL_HOURS": "0",
        "BACKUP_PATH": str(tmp_path_factory.mktemp("backups")),
        # Never the checkout's var/, where `make run` may have kept a credentials key.
        "DATA_DIR": str(tmp_path_factory.mktemp("data")),
    }


@pytest.fixture(scope="session")
def settings(environment: dict[str, str]) -> Settings:
    settings = load_settings(environment)
    yield settings
    delete_queues(settings.provisioning_queue_name)


@pytest.fixture(scope="session")
def sessions(settings: Settings):
    return session_factory(settings.database_url)


@pytest.fixture
def rolled_back(settings: Settings):
    """A connection in a transaction that is rolled back when the test ends.

    A test that asks for it (a module: ``pytestmark = pytest.mark.usefixtures("rolled_back")``)
    gets its ``session``, ``tenant_factory`` and ``app`` working inside that transaction, each
    commit only releasing a savepoint: SQLAlchemy's recipe for joining a session into an external
    transaction, as warehouse's tests do. Only for tests whose rows no other connection needs to
    see: not a worker's, gunicorn's, the CLI's, a fresh session's from ``sessions``, nor requests
    from several threads at once (they would share the one connection). Its app's jobs go to a
    queue no worker reads, since no worker could find them.
    """
    with get_engine(settings.database_url).connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()


def joining(connection) -> dict:
    """Session options that join ``connection``'s transaction, a commit releasing a savepoint."""
    return {"bind": connection, "join_transaction_mode": "create_savepoint"}


@pytest.fixture
def session(request: pytest.FixtureRequest, sessions):
    if "rolled_back" in request.fixturenames:
        sessions = sessionmaker(expire_on_commit=False, **joining(request.getfixturevalue("rolled_back")))
    with sessions() as session:
        yield session


@pytest.fixture
def tenant_factory(session):
    return factories.TenantFactory(session)


@pytest.fixture(scope="session")
def dispatcher(settings: Settings) -> Dispatcher:
    return Dispatcher(settings)


@pytest.fixture(scope="session")
def unread_settings(settings: Settings) -> Settings:
    """The run's settings with a queue of their own that no worker reads."""
    unread = settings.model_copy(update={"provisioning_queue_name": f"{settings.provisioning_queue_name}.unread"})
    yield unread
    delete_queues(unread.provisioning_queue_name)


@pytest.fixture
def app(request: pytest.FixtureRequest, settings: Settings):
    from api import create_app

    if "rolled_back" not in request.fixturenames:
        app = create_app(settings)
    else:
        app = create_app(request.getfixturevalue("unread_settings"))
        # The app's own session factory (it carries the app's listeners), joined to the test's transaction.
        app.extensions["provisioning_sessions"].configure(**joining(request.getfixturevalue("rolled_back")))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@dataclass
class IsolatedStack:
    """A database and a queue of one test's own, for tests whose workers or sweeps must not meet
    the rest of the run's jobs and messages."""

    environment: dict[str, str]
    settings: Settings
    dispatcher: Dispatcher
    sessions: sessionmaker

    def session(self) -> Session:
        return self.sessions()


@contextmanager
def isolated_stack(environment: dict[str, str], settings: Settings):
    suffix = uuid.uuid4().hex[:8]
    queue = f"{settings.provisioning_queue_name}.{suffix}"
    with migrated_database(f"provisioning_test_{RUN_ID}_{suffix}") as database_url:
        own = settings.model_copy(update={"provisioning_queue_name": queue, "database_url": database_url})
        env = {**environment, "DATABASE_URL": database_url, "PROVISIONING_QUEUE_NAME": queue}
        yield IsolatedStack(env, own, Dispatcher(own), session_factory(database_url))
        delete_queues(queue)


@pytest.fixture
def isolated(environment: dict[str, str], settings: Settings):
    with isolated_stack(environment, settings) as stack:
        yield stack


@pytest.fixture(scope="module")
def isolated_module(environment: dict[str, str], settings: Settings):
    """``isolated``, shared by the tests of one module."""
    with isolated_stack(environment, settings) as stack:
        yield stack


@pytest.fixture
def broker():
    """A RabbitMQ node of the test's own (never the machine's), ended whatever happens in the test."""
    node = RabbitMQNode()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def stack(request: pytest.FixtureRequest, isolated):
    """``isolated``, for tests that add bench servers: afterwards, the job queues of the servers its
    module names in ``SERVER_NAMES`` are deleted too (a server removed in a test has no row left
    to find them by)."""
    yield isolated
    for name in getattr(request.module, "SERVER_NAMES", ()):
        delete_queues(isolated.settings.queue_of_server(name))


@pytest.fixture(scope="session")
def worker(environment: dict[str, str], dispatcher: Dispatcher, database_url: str):
    """One real worker for the whole run, with zero-second simulated steps."""
    process = WorkerProcess(environment, dispatcher)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def web(environment: dict[str, str], tmp_path_factory) -> WebProcess:
    """The API as it is deployed: the Procfile's gunicorn, on this run's database and queue."""
    process = WebProcess(environment, tmp_path_factory.mktemp("web") / "web.log", WEB_CONCURRENCY="1")
    yield process
    process.stop()


@pytest.fixture
def listener(settings):
    with events_heard(settings) as heard:
        yield heard


@pytest.fixture
def runner(settings, sessions):
    """Makes runners as the worker does, on the simulated driver (or the one given)."""

    def make(
        step_seconds: float = 0, fail_step: str | None = None, driver=None, worker="test-runner@localhost", **options
    ) -> JobRunner:
        job_runner = JobRunner.for_settings(settings, sessions, driver or SimulatedDriver(step_seconds, fail_step), worker)
        for name, value in options.items():
            # The platform's backup steps are its platform steps' (``PlatformSteps``).
            setattr(job_runner.platform_steps if name == "backup_steps" else job_runner, name, value)
        return job_runner

    return make


@pytest.fixture(scope="session")
def s3() -> S3Server:
    """A real S3 endpoint on loopback (moto's server) with a bucket of this run's own."""
    server = S3Server(f"erpmax-test-{uuid.uuid4().hex[:12]}")
    yield server
    server.stop()


@pytest.fixture
def offsite_settings(environment: dict[str, str], s3: S3Server, tmp_path) -> Settings:
    """The run's settings with offsite copies to ``s3`` on, and a BACKUP_PATH of the test's own."""
    return load_settings({**environment, **s3.environment(), "BACKUP_PATH": str(tmp_path / "backups")})
