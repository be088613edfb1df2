"""Heartbeats: a running job vouches for its worker, and learns of a cancel, from one thread per process."""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
import uuid
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from provisioning.jobs.execution import JobExecution
from provisioning.jobs.records import Beat
from provisioning.jobs.step_interruptions import StopFlags
from provisioning.platform.db import utcnow
from provisioning.platform.quoting import first_line

log = logging.getLogger(__name__)

# How often the heartbeat looks for a cancel between its beats: how soon a step learns of one.
LOOK_SECONDS = 1.0


class Heartbeat:
    """Writes the job's ``heartbeat_at`` every ``interval`` seconds while the job runs, and
    records what each beat's answer says in the job's StopFlags. It writes nothing else and
    interrupts nothing: the runner's thread reads the flags.

    The sweeper fails a running job whose heartbeat is older than its deadline, naming the
    worker and the step: that is how a job whose worker was killed stops being ``running``.
    Each beat also learns whether the job is being cancelled (``flags.cancelled``), and once the
    cancel is older than ``cancel_grace``, that its grace period is over (``flags.grace_over``:
    a step that ignored the cancel must stop now). A beat that finds the job no longer its own
    (the sweeper declared this worker lost, and another worker may run its retry) sets
    ``flags.taken_away`` and beats no more. A beat that cannot reach the database is tried again
    at the next look; the failure is logged once, not at every try.

    Between beats it looks (a read, every ``LOOK_SECONDS``), so a cancel reaches a running step
    within about a second whatever the heartbeat's interval, and every step boundary reads it at
    once: the step's write returns the job's status.

    The beats come from the process's heartbeat thread (``HEARTBEATS``), which is started once,
    not once per job. Leaving the ``with`` block waits for a beat in flight, so nothing beats
    for the job once it has ended.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: uuid.UUID,
        worker: str,
        interval: float,
        cancel_grace: float,
        flags: StopFlags,
    ):
        self.sessions = sessions
        self.job_id = job_id
        self.worker = worker
        self.interval = interval
        self.cancel_grace = timedelta(seconds=cancel_grace)
        self.flags = flags
        # Beats run in a copy of the starting context, so their lines carry the job's fields.
        self.context = contextvars.copy_context()
        self.look_interval = min(interval, LOOK_SECONDS)
        self.due = time.monotonic() + self.look_interval
        self.beat_due = time.monotonic() + interval
        self.ended = False
        self.beating = threading.Lock()
        self.failing = False

    def __enter__(self) -> "Heartbeat":
        HEARTBEATS.add(self)
        return self

    def __exit__(self, *_exc) -> None:
        HEARTBEATS.remove(self)
        with self.beating:
            self.ended = True

    def beat(self) -> bool:
        """One beat when one is due, else a look; False once the job is not this worker's running
        job any more."""
        try:
            if time.monotonic() >= self.beat_due:
                answer = self.ask()
                self.beat_due = time.monotonic() + self.interval
            else:
                answer = self.look()
        except Exception as error:
            if not self.failing:  # once per outage, not at every look
                log.warning("job %s: heartbeat failed (%s); trying again each second", self.job_id, first_line(error))
                self.failing = True
            return True
        if self.failing:
            log.info("job %s: heartbeat answered again", self.job_id)
            self.failing = False
        return self.learn(answer)

    def ask(self) -> Beat | None:
        """Vouch for the job in a transaction of the heartbeat's own; the answer is the service's."""
        with self.sessions.begin() as session:
            return JobExecution(session).beat_heartbeat(self.job_id, self.worker)

    def look(self) -> Beat | None:
        """Read what a beat would learn, vouching for nothing."""
        with self.sessions() as session:
            return JobExecution(session).look_at_job(self.job_id, self.worker)

    def learn(self, answer: Beat | None) -> bool:
        """Record what a beat's answer says in the flags; False once the job is no longer ours."""
        if answer is None:
            # Finished (the flag is then read by nobody) or taken away: either way, stop the step.
            self.flags.taken_away.set()
            return False
        if answer.cancel_requested_at is not None:
            self.flags.cancelled.set()
            overdue = utcnow() - answer.cancel_requested_at >= self.cancel_grace
            if overdue and not self.flags.grace_over.is_set():
                log.warning(
                    "job %s: the cancel's grace period (%s) is over; its step must stop now", self.job_id, self.cancel_grace
                )
                self.flags.grace_over.set()
        return True


class Heartbeats:
    """The process's heartbeat thread: it beats for every job the process runs (a worker's pool
    process runs one at a time, a test may run several in threads), each at its own interval.

    Starting a thread per job cost about a tenth of a quick job's time; this one starts with the
    first job of the process (a forked pool process starts its own). Nor is it woken for each new
    job: only when the job's first beat is due before the thread would look again anyway.
    """

    def __init__(self):
        self._beating: set[Heartbeat] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._looks_again_at = math.inf

    def add(self, heartbeat: Heartbeat) -> None:
        with self._changed:
            self._beating.add(heartbeat)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
                self._thread.start()
            if heartbeat.due < self._looks_again_at:
                self._changed.notify()

    def remove(self, heartbeat: Heartbeat) -> None:
        with self._changed:
            self._beating.discard(heartbeat)

    def _run(self) -> None:
        while True:
            for heartbeat in self._wait_for_due():
                with heartbeat.beating:
                    # The job may have ended between being found due and now.
                    keep = not heartbeat.ended and heartbeat.context.run(heartbeat.beat)
                heartbeat.due = time.monotonic() + heartbeat.look_interval
                if not keep:
                    self.remove(heartbeat)

    def _wait_for_due(self) -> list[Heartbeat]:
        with self._changed:
            while True:
                now = time.monotonic()
                due = [heartbeat for heartbeat in self._beating if heartbeat.due <= now]
                if due:
                    return due
                self._looks_again_at = min((heartbeat.due for heartbeat in self._beating), default=math.inf)
                self._changed.wait(None if self._looks_again_at == math.inf else self._looks_again_at - now)


HEARTBEATS = Heartbeats()
