"""The service's real processes and resources for tests and the soak: databases, queues, workers, the sweeper."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from kombu import Connection, Queue
from sqlalchemy import create_engine, text

from celeryconfig import events_exchange
from provisioning.messaging.broker import Dispatcher
from provisioning.platform import migrate
from provisioning.platform.db import get_engine
from provisioning.platform.settings import Settings, load_settings
from tests.helpers import wait_for
from tests.processes import GroupProcess, free_port, procfile_commands

ADMIN_DATABASE_URL = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
# The machine's Redis, shared by every run: a run keeps to keys of its own prefix, and never flushes it.
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Names this process gives its databases, queues and workers, so runs never collide. Each
# pytest-xdist worker is a process of its own, so each has its own; its xdist name (gw0, gw1...)
# ends it, to tell which worker left something behind.
RUN_ID = "_".join(filter(None, (uuid.uuid4().hex[:10], os.environ.get("PYTEST_XDIST_WORKER"))))


@contextmanager
def empty_database(name: str):
    """A new PostgreSQL database with no schema at all (as before `provisioning db upgrade`),
    dropped afterwards; yields its URL."""
    admin = create_engine(ADMIN_DATABASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_DATABASE_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def migrated_database(name: str):
    """A new PostgreSQL database, migrated with Alembic, dropped afterwards; yields its URL."""
    with empty_database(name) as url:
        migrate.upgrade(url)
        yield url


def delete_queues(queue_name: str) -> None:
    """Remove a job queue of a test, its dead-letter queue, the exchanges Celery made for them, and
    its job events' exchange."""
    with Connection(RABBITMQ_URL) as connection:
        channel = connection.default_channel
        for name in (queue_name, f"{queue_name}.dead"):
            channel.queue_delete(name)
            channel.exchange_delete(name)
        channel.exchange_delete(f"{queue_name}.events")


@contextmanager
def events_heard(settings: Settings):
    """A queue of the test's own bound to the events exchange, as billing's would be; yields
    ``(hear, heard)``: ``hear(until)`` takes the messages that reach it into ``heard`` until one's
    payload makes ``until`` true."""
    with Connection(settings.broker_url) as connection:
        queue = Queue(f"billing-{uuid.uuid4().hex[:6]}", exchange=events_exchange(settings), routing_key="job.*", exclusive=True)
        simple = connection.SimpleQueue(queue)
        heard = []

        def hear(until, timeout: float = 30):
            def heard_it():
                try:
                    message = simple.get(timeout=0.5)
                except simple.Empty:
                    return False
                message.ack()
                heard.append(message)
                return until(message.payload)

            return wait_for(heard_it, timeout=timeout, interval=0, what="an event")

        try:
            yield hear, heard
        finally:
            simple.close()


def process_environment(extra: dict[str, str]) -> dict[str, str]:
    """The test process's environment without our own settings, plus ``extra``."""
    ours = {"database_url", "provisioning_queue_name", "simulated_step_seconds", "simulated_fail_step", "data_dir"}
    env = {key: value for key, value in os.environ.items() if key.lower() not in ours and not key.lower().startswith("rabbitmq_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class WorkerProcess:
    """A real ``celery -A tasks worker`` on a test's queue, in a process group of its own, so a test
    can kill the whole worker, pool processes and all."""

    def __init__(
        self,
        environment: dict[str, str],
        dispatcher: Dispatcher,
        concurrency: int = 2,
        name: str | None = None,
        app: str = "tasks",
    ):
        self.name = name or f"test-{RUN_ID}-{uuid.uuid4().hex[:6]}@localhost"
        self.dispatcher = dispatcher
        command = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "-Q", load_settings(environment).worker_queue_name, "-n", self.name,
            "-c", str(concurrency), "-P", "prefork", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        log_path = Path(tempfile.gettempdir()) / f"{self.name.split('@')[0]}.log"
        self.group = GroupProcess(self.name, command, process_environment(environment), log_path)
        try:
            wait_for(self._answers_ping, timeout=60, interval=0.5, what=f"worker {self.name} to answer a ping")
        except BaseException:
            self.kill()  # never leave a half-started worker behind
            raise

    @property
    def process(self) -> subprocess.Popen:
        return self.group.process

    def _answers_ping(self) -> bool:
        self.group.assert_alive()
        connection = self.dispatcher.app.connection_for_read()
        try:
            return bool(self.dispatcher.app.control.ping(destination=[self.name], timeout=0.5, connection=connection))
        except connection.connection_errors:
            return False  # the broker is restarting: ask again
        finally:
            connection.release()

    def output(self) -> str:
        return self.group.output()

    def pool_processes(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crashed machine would."""
        self.group.stop(signal.SIGKILL, timeout=30)

    def stop(self) -> None:
        """SIGTERM the prefork parent (a warm shutdown); the whole group is killed if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.group.wait_stopped(timeout=30)


class SweeperProcess:
    """The sweeper, started with the Procfile's ``sweeper`` line, with its log in ``directory``."""

    def __init__(self, environment: dict[str, str], directory: Path):
        env = process_environment({**environment, "DATA_DIR": str(directory / "data")})
        self.group = GroupProcess("sweeper", procfile_commands()["sweeper"], env, directory / "sweeper.log")

    def stop(self) -> str:
        """Stop the sweeper and return what it logged."""
        self.group.stop(signal.SIGTERM, timeout=30)
        return self.group.output()


class WebProcess:
    """gunicorn started with the Procfile's ``web`` line exactly, on a free port, logging JSON lines,
    answering once made; ``extra`` adds settings (``WEB_CONCURRENCY="1"`` for a lighter one)."""

    def __init__(self, environment: dict[str, str], log_path: Path, **extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = process_environment({**environment, "PORT": str(self.port), "LOG_FORMAT": "json", **extra})
        self.group = GroupProcess("web", procfile_commands()["web"], env, log_path)
        try:
            wait_for(self._answers, timeout=60, interval=0.2, what="gunicorn to answer /healthz")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        self.group.assert_alive()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as probe:
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                return probe.recv(12).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def log_lines(self) -> list[dict]:
        """What it logged so far, one JSON object a line (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.group.output().splitlines() if line.strip()]

    def stop(self) -> None:
        self.group.stop()
        print(self.group.describe())  # shown by pytest when the test failed


class TcpRelay:
    """A relay of a test's own in front of a TCP server (the broker): ``cut()`` closes every
    connection made through it, from the server's side, as a broker restart does, while new
    connections still go through. A test breaks a client's connection this way without reaching
    into the client."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.listener = socket.create_server(("127.0.0.1", 0))
        credentials = f"{parts.username}:{parts.password}@" if parts.username else ""
        self.url = f"{parts.scheme}://{credentials}127.0.0.1:{self.listener.getsockname()[1]}{parts.path}"
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self.target)
            self.open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), name="relay-pump", daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:  # cut
            pass

    def cut(self) -> None:
        for connection in self.open:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self.open.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()
