"""How a running step is interrupted from outside it: by the heartbeat's thread, when a cancel
outlived its grace period or the job was taken away (StepTerminator), and by a stop of the
worker's pool process (WorkerStop). Both raise a BaseException inside the step, so a driver's
``except Exception`` cannot swallow it; the runner then records what happened.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from contextlib import contextmanager

from provisioning.errors import StepTerminated, WorkerStopping

log = logging.getLogger(__name__)


class StepTerminator:
    """Interrupts a step that will not stop by itself, by raising StepTerminated inside it.

    Celery runs a task in its pool process's main thread; ``terminate()``, called from the
    heartbeat's thread, sends that thread SIGUSR2. The handler is installed once per process
    and stays (a late signal must never meet the default action, which kills the process); it
    raises only while a step of the job that asked is running, so a signal that arrives between
    steps, or after the job ended, does nothing; nor does one for a cancel while a step that a
    cancel must not stop runs (``step(stops_for_a_cancel=False)``). StepTerminated is a
    BaseException, so a driver's ``except Exception`` cannot swallow it. Outside the main thread
    (tests that run a job in a thread of their own) a step cannot be interrupted this way, and
    this says so.
    """

    SIGNAL = signal.SIGUSR2
    _installed = False

    def __init__(self, job_id: uuid.UUID):
        self.job_id = job_id
        self.usable = threading.current_thread() is threading.main_thread()
        self._reason: str | None = None
        self._for_a_cancel = False
        self._stops_for_a_cancel = True
        if self.usable:
            self._install()

    @classmethod
    def _install(cls) -> None:
        if not cls._installed:
            signal.signal(cls.SIGNAL, cls._interrupt)
            cls._installed = True

    _current: "StepTerminator | None" = None

    @contextmanager
    def step(self, stops_for_a_cancel: bool = True):
        self._stops_for_a_cancel = stops_for_a_cancel
        StepTerminator._current = self
        try:
            yield
        finally:
            StepTerminator._current = None

    def terminate(self, reason: str, for_a_cancel: bool = False) -> None:
        if not self.usable:
            log.warning("job %s: its step cannot be interrupted outside a main thread (%s)", self.job_id, reason)
            return
        self._reason, self._for_a_cancel = reason, for_a_cancel
        signal.pthread_kill(threading.main_thread().ident, self.SIGNAL)

    @staticmethod
    def _interrupt(_signum, _frame) -> None:
        current = StepTerminator._current
        if current is None or current._reason is None:
            return
        if current._for_a_cancel and not current._stops_for_a_cancel:
            log.warning("job %s: the step runs on to its end: a cancel cannot take it back", current.job_id)
            return
        StepTerminator._current = None
        raise StepTerminated(current._reason)


class WorkerStop:
    """A stop of the worker process (SIGTERM) while it runs a job: the job fails at the step it
    was in, saying so, and its retry resumes there, as for a worker the sweeper reaps.

    A Celery pool process gets SIGTERM when the whole worker is stopped at once: Ctrl-C under
    ``make run`` (honcho signals the worker's process group), systemd's default KillMode, a
    container's stop. Billiard's handler would raise SystemExit in the task: the parent then
    logs a WorkerLostError traceback and the job stays running until it is reaped. While a job
    runs, this handler takes SIGTERM instead: inside a step it raises WorkerStopping there (a
    BaseException, like StepTerminated: a bench command is stopped whole on the way out);
    between steps, the next step does not start. Either way the runner fails the job and the
    task returns; the worker's warm shutdown (it got the signal too) then ends the process.
    Outside a job the previous handler is back, so an idle pool process exits at once, as
    before. A stop of the worker's main process alone (Celery's ``shutdown`` control, a SIGTERM
    to it only) reaches no pool process: the warm shutdown lets the job run to its end.

    Only a pool process takes SIGTERM this way (``enabled``, which its task sets): where a job
    runs in the worker's own process (``-P solo``), SIGTERM stays Celery's warm shutdown, which
    lets the job finish. A pool process that alone gets SIGTERM (billiard's hard time limit,
    which kills it 0.1 s later anyway, a revoke with ``terminate``, an operator's ``kill``) fails
    its job the same way. Signals arrive in the main thread only; elsewhere (tests that run a job
    in a thread) this does nothing.
    """

    def __init__(self, worker: str, enabled: bool):
        self.worker = worker
        self.usable = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._in_step = False
        self._previous = None

    def __enter__(self) -> "WorkerStop":
        if self.usable:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        if self.usable:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)

    @contextmanager
    def step(self):
        self._in_step = True
        try:
            yield
        finally:
            self._in_step = False

    def reason(self, when: str) -> str:
        return f"worker {self.worker} was stopped {when}: its process received SIGTERM"

    def _handle(self, _signum, _frame) -> None:
        self.requested = True
        if self._in_step:
            self._in_step = False
            raise WorkerStopping()
