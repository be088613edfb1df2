"""Running the service's real processes from tests: free ports, process groups, logs, leftovers.

Every process a test starts carries ``PROVISIONING_TEST_TAG=<tag>`` in its environment, which
all its descendants inherit even when they start sessions of their own (honcho does) or are
reparented, so ``tagged_processes(tag)`` finds anything left behind. Linux only (``/proc``).
"""

from __future__ import annotations

import fcntl
import os
import pty
import shlex
import signal
import socket
import subprocess
import termios
import threading
import uuid
from pathlib import Path

from tests.helpers import wait_for

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TAG_VARIABLE = "PROVISIONING_TEST_TAG"
# What a worker logs when a monitor (Flower) turns its task events on; until then, no monitor sees a task.
TASK_EVENTS_ON = "Events of group {task} enabled by remote"


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def new_tag() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def procfile_commands(path: Path = PROJECT_ROOT / "Procfile") -> dict[str, str]:
    """The Procfile's lines as ``{name: command}``, commands exactly as written."""
    commands = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            commands[name.strip()] = command.strip()
    return commands


def tagged_processes(tag: str) -> list[int]:
    """Pids of live processes whose environment has ``PROVISIONING_TEST_TAG=<tag>`` (zombies have none)."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_tagged(tag: str) -> None:
    """SIGKILL every process carrying the tag: the last resort of a clean-up."""
    for pid in tagged_processes(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def group_is_gone(pgid: int) -> bool:
    """True once no process (zombies included) is left in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


class GroupProcess:
    """One command in a session (and process group) of its own, its output in a log file."""

    def __init__(self, name: str, command: str | list[str], env: dict[str, str], log_path: Path, cwd: Path = PROJECT_ROOT):
        self.name = name
        self.command = command
        self.log_path = log_path
        self._log = log_path.open("wb")
        argv = ["sh", "-c", command] if isinstance(command, str) else command
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pgid = self.process.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def describe(self) -> str:
        command = self.command if isinstance(self.command, str) else shlex.join(self.command)
        return f"--- {self.name} ({command}), last lines of {self.log_path}:\n{self.tail()}"

    def assert_alive(self) -> None:
        """Fail with the process's log if it has exited."""
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited early with code {self.process.returncode}\n{self.describe()}")

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def wait_until_group_is_gone(self, timeout: float) -> None:
        wait_for(
            lambda: group_is_gone(self.pgid), timeout=timeout, interval=0.1, what=f"every process of {self.name}'s group to exit"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> bool:
        """Signal the whole group and wait for all of it to exit; SIGKILL it at the deadline.

        Returns True when the group went on its own, False when it had to be killed.
        """
        self.signal_group(sig)
        return self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float = 30) -> bool:
        """Wait for the signalled group to exit, SIGKILL it at the deadline; True if it went on its own."""
        graceful = True
        try:
            self.process.wait(timeout=timeout)
            self.wait_until_group_is_gone(timeout=10)
        except (subprocess.TimeoutExpired, AssertionError):
            graceful = False
            self.signal_group(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.wait_until_group_is_gone(timeout=10)
        self._log.close()
        return graceful


def stop_all(processes: dict[str, GroupProcess], sig: int = signal.SIGTERM, timeout: float = 30) -> dict[str, bool]:
    """Signal every group at once, then wait for each; ``{name: went on its own}``."""
    for process in processes.values():
        process.signal_group(sig)
    return {name: process.wait_stopped(timeout) for name, process in processes.items()}


class TerminalProcess:
    """A command run as a person runs it in a terminal: in a session of its own whose controlling
    terminal is a pseudo-terminal, its output (with the terminal's ``\\r\\n``) copied to a log file.

    ``ctrl_c()`` and ``ctrl_z()`` type those keys: the terminal signals its foreground process
    group, whichever that is then, exactly as a real one does.
    """

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path, cwd: Path = PROJECT_ROOT):
        self.name = name
        self.command = command
        self.log_path = log_path
        self._master, terminal = pty.openpty()
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
            preexec_fn=_take_controlling_terminal,
        )  # fmt: skip
        os.close(terminal)
        self._copier = threading.Thread(target=self._copy_output, name=f"{name}-output", daemon=True)
        self._copier.start()

    def _copy_output(self) -> None:
        with self.log_path.open("wb") as log:
            while True:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:  # EIO: every process holding the terminal has exited
                    break
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
        os.close(self._master)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace").replace("\r\n", "\n") if self.log_path.exists() else ""

    def describe(self) -> str:
        tail = "\n".join(self.output().splitlines()[-80:])
        return f"--- {self.name} ({shlex.join(self.command)}) in a terminal, last lines of {self.log_path}:\n{tail}"

    def assert_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited early with code {self.process.returncode}\n{self.describe()}")

    def ctrl_c(self) -> None:
        os.write(self._master, b"\x03")

    def ctrl_z(self) -> None:
        os.write(self._master, b"\x1a")

    def wait(self, timeout: float) -> int:
        """The exit code, once the command and everything that kept its terminal open are gone."""
        code = self.process.wait(timeout=timeout)
        self._copier.join(timeout)
        return code


def _take_controlling_terminal() -> None:
    """In the child, after its setsid: its standard input, the pseudo-terminal, becomes its session's terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
