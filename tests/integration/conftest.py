"""Integration fixtures: a PostgreSQL database and RabbitMQ queues of this run's own, and a real worker.

Every run creates a database ``provisioning_test_<random>`` migrated with Alembic and queues
``erpmax.provisioning.test-<random>``, so runs never collide; both are removed at the end.
Tests isolate their data by making tenants of their own, which also lets a real worker (a
separate process) see what a test committed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kombu import Connection
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from provisioning import migrate
from provisioning.broker import Dispatcher
from provisioning.db import get_engine, session_factory
from provisioning.settings import Settings, load_settings
from tests import factories
from tests.helpers import wait_for

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ADMIN_DATABASE_URL = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
HOW_TO_START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "RabbitMQ": "rabbitmq-server -detached",
}
RUN_ID = uuid.uuid4().hex[:10]


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


@contextmanager
def migrated_database(name: str):
    """A new PostgreSQL database, migrated with Alembic, dropped afterwards; yields its URL."""
    admin = create_engine(ADMIN_DATABASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_DATABASE_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate.upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> str:
    with migrated_database(f"provisioning_test_{RUN_ID}") as url:
        yield url


@pytest.fixture(scope="session")
def environment(database_url: str) -> dict[str, str]:
    """The environment of this run's service processes (workers, gunicorn, Flower)."""
    return {
        "DATABASE_URL": database_url,
        "RABBITMQ_URL": RABBITMQ_URL,
        "PROVISIONING_QUEUE_NAME": f"erpmax.provisioning.test-{RUN_ID}",
        "SIMULATED_STEP_SECONDS": "0",
    }


def delete_queues(queue_name: str) -> None:
    """Remove a job queue of a test, its dead-letter queue, and the exchanges Celery made for them."""
    with Connection(RABBITMQ_URL) as connection:
        channel = connection.default_channel
        for name in (queue_name, f"{queue_name}.dead"):
            channel.queue_delete(name)
            channel.exchange_delete(name)


@pytest.fixture(scope="session")
def settings(environment: dict[str, str]) -> Settings:
    settings = load_settings(environment)
    yield settings
    delete_queues(settings.provisioning_queue_name)


@pytest.fixture(scope="session")
def sessions(settings: Settings):
    return session_factory(settings.database_url)


@pytest.fixture
def session(sessions):
    with sessions() as session:
        yield session


@pytest.fixture
def tenant_factory(session):
    return factories.TenantFactory(session)


@pytest.fixture(scope="session")
def dispatcher(settings: Settings) -> Dispatcher:
    return Dispatcher(settings)


@pytest.fixture
def app(settings: Settings):
    from api import create_app

    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def process_environment(extra: dict[str, str]) -> dict[str, str]:
    """The test process's environment without our own settings, plus ``extra``."""
    ours = {"database_url", "provisioning_queue_name", "simulated_step_seconds", "simulated_fail_step", "data_dir"}
    env = {key: value for key, value in os.environ.items() if key.lower() not in ours and not key.lower().startswith("rabbitmq_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class WorkerProcess:
    """A real ``celery -A tasks worker`` on this run's queue, started and stopped by a test."""

    def __init__(self, environment: dict[str, str], dispatcher: Dispatcher, concurrency: int = 2, name: str | None = None):
        self.name = name or f"test-{RUN_ID}-{uuid.uuid4().hex[:6]}@localhost"
        self.dispatcher = dispatcher
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{self.name.split('@')[0]}.log"
        command = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker",
            "-Q", environment["PROVISIONING_QUEUE_NAME"], "-n", self.name,
            "-c", str(concurrency), "-P", "prefork", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=process_environment(environment),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so a test can kill the whole worker, pool processes and all
        )
        wait_for(self._answers_ping, timeout=60, interval=0.5, what=f"worker {self.name} to answer a ping")

    def _answers_ping(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.output()}")
        return bool(self.dispatcher.app.control.ping(destination=[self.name], timeout=0.5))

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def pool_processes(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crashed machine would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        """SIGTERM the prefork parent (a warm shutdown), then make sure it is gone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


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


@pytest.fixture
def isolated(environment: dict[str, str], settings: Settings):
    suffix = uuid.uuid4().hex[:8]
    queue = f"{settings.provisioning_queue_name}.{suffix}"
    with migrated_database(f"provisioning_test_{RUN_ID}_{suffix}") as database_url:
        own = replace(settings, provisioning_queue_name=queue, database_url=database_url)
        env = {**environment, "DATABASE_URL": database_url, "PROVISIONING_QUEUE_NAME": queue}
        yield IsolatedStack(env, own, Dispatcher(own), session_factory(database_url))
        delete_queues(queue)


@pytest.fixture(scope="session")
def worker(environment: dict[str, str], dispatcher: Dispatcher, database_url: str):
    """One real worker for the whole run, with zero-second simulated steps."""
    process = WorkerProcess(environment, dispatcher)
    yield process
    process.stop()
