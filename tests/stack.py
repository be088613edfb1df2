"""The service's real processes and resources for tests and the soak: databases, queues, workers, beat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from kombu import Connection
from sqlalchemy import create_engine, text

from provisioning import migrate
from provisioning.broker import Dispatcher
from provisioning.db import get_engine
from tests.helpers import wait_for

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ADMIN_DATABASE_URL = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
# Names this process gives its databases, queues and workers, so runs never collide.
RUN_ID = uuid.uuid4().hex[:10]


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


def delete_queues(queue_name: str) -> None:
    """Remove a job queue of a test, its dead-letter queue, and the exchanges Celery made for them."""
    with Connection(RABBITMQ_URL) as connection:
        channel = connection.default_channel
        for name in (queue_name, f"{queue_name}.dead"):
            channel.queue_delete(name)
            channel.exchange_delete(name)


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
        self.log_path = Path(tempfile.gettempdir()) / f"{self.name.split('@')[0]}.log"
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
        try:
            wait_for(self._answers_ping, timeout=60, interval=0.5, what=f"worker {self.name} to answer a ping")
        except BaseException:
            self.kill()  # never leave a half-started worker behind
            raise

    def _answers_ping(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.output()}")
        connection = self.dispatcher.app.connection_for_read()
        try:
            return bool(self.dispatcher.app.control.ping(destination=[self.name], timeout=0.5, connection=connection))
        except connection.connection_errors:
            return False  # the broker is restarting: ask again
        finally:
            connection.release()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def pool_processes(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crashed machine would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone
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


class BeatProcess:
    """Celery beat, as the Procfile runs it, with its log in ``directory`` and its schedule file in
    a data directory beat must create itself, as on a fresh checkout."""

    def __init__(self, environment: dict[str, str], directory: Path):
        self.log_path = directory / "beat.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel", "INFO"],
                cwd=PROJECT_ROOT,
                env=process_environment({**environment, "DATA_DIR": str(directory / "data")}),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> str:
        """Stop beat and return what it logged."""
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.log_path.read_text(errors="replace")
