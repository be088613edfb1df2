"""What stops a running step from outside it, as flags the step's own thread reads (StopFlags):
set by the heartbeat's thread (a cancel, its grace period over, the job taken away) and by a
SIGTERM to a worker's pool process (WorkerStop). Nothing here interrupts a thread: the step asks
(a bench command's polling loop, the simulated driver's wait), then stops its own work.
"""

from __future__ import annotations

import signal
import threading

GRACE_OVER = "did not stop within the cancel's grace period"
TAKEN_AWAY = "was stopped: the job is no longer this worker's"
WORKER_STOPPING = "was stopped: its worker process received SIGTERM"


class StopFlags:
    """What the runner's thread knows, from outside its step, about whether the step should stop.

    The heartbeat's flags are ``threading.Event``s, set by its thread and read by the runner's
    without a lock; ``worker_stopping`` is a plain attribute, because a signal handler sets it
    and must take no lock (a second SIGTERM could land inside the first handler's ``set()``).
    A flag is never cleared: a job gets a new StopFlags. A cancel asks a step to stop (a
    cooperative step then stops, and the job's cancel is settled); the other three make it stop
    now, even a step that ignores a cancel. The point of no return ignores the cancel and its
    grace period (``stops_for_a_cancel=False``), never a job taken away or a worker stopping.
    """

    def __init__(self):
        self.cancelled = threading.Event()  # the heartbeat saw the job's cancel requested
        self.grace_over = threading.Event()  # ...and, later, that the cancel's grace period is over
        self.taken_away = threading.Event()  # the heartbeat found the job no longer this worker's
        self.worker_stopping = False  # the pool process received SIGTERM (WorkerStop)

    def should_stop(self, stops_for_a_cancel: bool = True) -> bool:
        """True once the step should stop early: a cooperative step asks, and raises StepStopped."""
        return (stops_for_a_cancel and self.cancelled.is_set()) or self.must_stop(stops_for_a_cancel) is not None

    def must_stop(self, stops_for_a_cancel: bool = True) -> str | None:
        """Why the step must end now, even one that ignores a cancel (it then raises
        StepTerminated with this reason); None while it may run on."""
        if self.worker_stopping:
            return WORKER_STOPPING
        if self.taken_away.is_set():
            return TAKEN_AWAY
        if stops_for_a_cancel and self.grace_over.is_set():
            return GRACE_OVER
        return None


class WorkerStop:
    """A stop of the worker process (SIGTERM) while it runs a job: the job fails at the step it
    was in, saying so, and its retry resumes there, as for a worker the sweeper reaps.

    A Celery pool process gets SIGTERM when the whole worker is stopped at once: Ctrl-C under
    ``make run`` (honcho signals the worker's process group), systemd's default KillMode, a
    container's stop. Billiard's handler would raise SystemExit in the task: the parent then
    logs a WorkerLostError traceback and the job stays running until it is reaped. While a job
    runs, this handler takes SIGTERM instead and only sets ``flags.worker_stopping``: the step
    stops at its next check (a bench command's process group is stopped whole) and no step
    starts after it. The runner then fails the job and the task returns; the worker's warm
    shutdown (it got the signal too) ends the process. Outside a job the previous handler is
    back, so an idle pool process exits at once, as before. A stop of the worker's main process
    alone (Celery's ``shutdown`` control, a SIGTERM to it only) reaches no pool process: the warm
    shutdown lets the job run to its end.

    Only a pool process takes SIGTERM this way (``enabled``, which its task sets): where a job
    runs in the worker's own process (``-P solo``), SIGTERM stays Celery's warm shutdown, which
    lets the job finish. Signals arrive in the main thread only; elsewhere (tests that run a job
    in a thread) this does nothing.
    """

    def __init__(self, worker: str, enabled: bool, flags: StopFlags):
        self.worker = worker
        self.flags = flags
        self.usable = enabled and threading.current_thread() is threading.main_thread()
        self._previous = None

    def __enter__(self) -> "WorkerStop":
        if self.usable:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        if self.usable:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)

    @property
    def requested(self) -> bool:
        return self.flags.worker_stopping

    def reason(self, when: str) -> str:
        return f"worker {self.worker} was stopped {when}: its process received SIGTERM"

    def _handle(self, _signum, _frame) -> None:
        # Only a flag: the handler may run between any two bytecodes of the runner's thread, in
        # the middle of a query as well; the thread reads the flag where it is safe to stop.
        self.flags.worker_stopping = True
