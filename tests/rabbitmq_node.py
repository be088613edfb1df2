"""A RabbitMQ node of a test's own, for tests that stop and start a broker: never the machine's.

The node runs from the machine's RabbitMQ installation (``rabbitmq-server``, ``rabbitmqctl``) with
a node name, AMQP and distribution ports, and a data directory of its own, and no plugins (so no
management listener to collide with the machine's). Debian's wrappers run the node as the
``rabbitmq`` user when started by root: its directory is that user's, under the system's temporary
directory (a pytest ``tmp_path`` is root's alone).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.helpers import wait_for
from tests.processes import free_port

RABBITMQ_USER = "rabbitmq"


class RabbitMQNode:
    """Started when made; ``stop_app``/``start_app`` take it down and up, ``stop`` ends it for good."""

    def __init__(self):
        self.name = f"erpmax-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.directory = Path(tempfile.mkdtemp(prefix="erpmax-rabbitmq-"))
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq-env.conf").write_text("")  # not the machine's, which names its node
        if os.geteuid() == 0:
            for path in (self.directory, *self.directory.rglob("*")):
                shutil.chown(path, RABBITMQ_USER, RABBITMQ_USER)
        self.environment = {
            **os.environ,
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.directory / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config"),
            "RABBITMQ_GENERATED_CONFIG_DIR": str(self.directory / "config"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.directory / "plugins"),
        }
        try:
            subprocess.run(["rabbitmq-server", "-detached"], env=self.environment, check=True, capture_output=True, timeout=60)
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise

    def stop_app(self) -> None:
        """Stop the broker in the node (connections dropped, queues kept), as a broker restart begins."""
        self._ctl("stop_app")

    def start_app(self) -> None:
        self._ctl("start_app")
        self._wait_until_answering()

    def stop(self) -> None:
        """End the node and remove its data."""
        self._ctl("stop", check=False)  # already gone is as good
        shutil.rmtree(self.directory, ignore_errors=True)

    def _ctl(self, *args: str, check: bool = True) -> None:
        command = ["rabbitmqctl", "-n", self.name, *args]
        subprocess.run(command, env=self.environment, check=check, capture_output=True, timeout=120)

    def _wait_until_answering(self) -> None:
        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(answers, timeout=90, interval=0.2, what=f"RabbitMQ node {self.name} to answer on port {self.port}")
