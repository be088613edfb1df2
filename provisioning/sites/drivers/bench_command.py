"""One bench command as a process: its own process group, its output kept with secrets
redacted, its password prompts answered on stdin, and the whole group stopped on a cancel, a
timeout or any interruption."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque

from provisioning.errors import StepFailed, StepStopped, StepTerminated
from provisioning.sites.drivers.base import StepContext
from provisioning.sites.drivers.bench_config import BenchConfig

log = logging.getLogger(__name__)

REDACTED = "********"
POLL_SECONDS = 0.2
TERMINATE_GRACE_SECONDS = 5.0
ERROR_LINES = 8
KEPT_LINES = 2000
# bench is killed if the worker process dies (SIGKILL, OOM) before it could stop it: util-linux's
# setpriv sets that up and then runs bench in its place (a preexec_fn could deadlock in a process
# with threads).
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--") if shutil.which("setpriv") else ()


class Command:
    """One bench command: runs it in its own process group, keeps the tail of its output with
    secrets redacted, and stops the group on a cancel, a timeout or any interruption."""

    def __init__(self, config: BenchConfig, args: list[str], answers: list[str], context: StepContext, deadline: float):
        self.config = config
        self.args = args
        # The lines bench's password prompts read from stdin, in the order it asks.
        self.answers = answers
        self.secrets = [secret for secret in [config.db_root_password, *answers] if secret]
        self.context = context
        self.deadline = deadline
        self.lines: deque[str] = deque(maxlen=KEPT_LINES)  # stdout and stderr, as they came
        self.stdout: list[str] = []  # stdout alone, for a command whose answer is read
        self.exit_code: int | None = None

    @property
    def shown(self) -> str:
        return self.redact("bench " + " ".join(self.args))

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    @property
    def output(self) -> str:
        return self.redact("\n".join(self.lines))

    def run(self, check: bool = True) -> int:
        """Run to the end; returns the exit code.

        Raises:
            StepFailed: with ``check``, a non-zero exit, naming the code and the last lines; or a timeout.
            StepStopped: the job asked the step to stop (a cancel): the command's group is stopped.
            StepTerminated: the step must end now (see ``StepContext.must_stop``): the same, saying why.
        """
        log.info("job %s: running %s", self.context.job_id, self.shown)
        process = subprocess.Popen(
            [*DIE_WITH_PARENT, self.config.executable, *self.args],
            cwd=self.config.bench_path,
            # What bench asks for it reads from here; anything more it asks for meets the end of
            # the input and fails, rather than wait for a terminal there is none of.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
            # frappe's progress bars: a line of dots per bar with CI set, else a line per update
            # (about 1,100 a new-site), which would push what matters out of the output kept.
            env={**os.environ, "CI": "1"},
        )
        readers = [
            threading.Thread(target=self._read, args=(process.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(process.stderr, None), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            self._answer(process)
            while process.poll() is None:
                # Asked every POLL_SECONDS: a read of flags the heartbeat sets, no query.
                if self.context.should_stop():
                    self._stop_group(process)
                    if reason := self.context.must_stop():
                        raise StepTerminated(reason)
                    raise StepStopped(f"{self.shown} was stopped")
                if time.monotonic() >= self.deadline:
                    self._stop_group(process)
                    raise StepFailed(
                        f"`{self.shown}` timed out after {self.config.step_timeout:g}s (BENCH_STEP_TIMEOUT_SECONDS)",
                        output=self.output,
                    )
                time.sleep(POLL_SECONDS)
        finally:
            if process.poll() is None:  # interrupted from outside (Celery's soft time limit)
                self._stop_group(process)
            _signal_group(process.pid, signal.SIGKILL)  # children that outlived bench, had it exited by itself
            process.wait()
            for reader in readers:
                reader.join(timeout=TERMINATE_GRACE_SECONDS)
        self.exit_code = process.returncode
        if check and self.exit_code != 0:
            raise StepFailed(self.failure(self.exit_code), output=self.output)
        return self.exit_code

    def _answer(self, process: subprocess.Popen) -> None:
        """Write the answers to bench's stdin and close it. A bench that ended without reading
        them (it failed at once) closed its end: its exit code and what it printed say why, not
        the broken pipe."""
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write("".join(f"{answer}\n" for answer in self.answers))
            process.stdin.flush()
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()

    def failure(self, exit_code: int) -> str:
        last = self.redact("\n".join(list(self.lines)[-ERROR_LINES:]))
        return f"`{self.shown}` exited with {exit_code}:\n{last}"

    def _read(self, stream, kept: list[str] | None) -> None:
        """Keep the stream's lines for the output shown (both streams), and in ``kept`` (stdout)."""
        for line in stream:
            line = line.rstrip("\n")
            self.lines.append(line)
            if kept is not None and len(kept) < KEPT_LINES:
                kept.append(line)

    def _stop_group(self, process: subprocess.Popen) -> None:
        """SIGTERM the whole group, give it a grace period, then SIGKILL what is left (once: a
        command that ignores SIGTERM costs one grace period, not one per place that stops it)."""
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=TERMINATE_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
