"""StepJournal: what a runner writes about its job's steps, batched when the steps are quick."""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, Protocol

from provisioning.db import utcnow
from provisioning.enums import JobStatus, StepStatus
from provisioning.service import StepRecord
from provisioning.workflows import Step, Workflow


class StepWriter(Protocol):
    def write_steps(
        self, job_id: uuid.UUID, worker: str, done: list[StepRecord], starting: StepRecord | None = None
    ) -> JobStatus | None: ...


class StatusWatch(Protocol):
    def status(self, fresh: bool = False) -> JobStatus | None: ...

    def saw(self, status: JobStatus | None) -> None: ...


class StepJournal:
    """The steps a runner went through and has not written yet.

    A step's start is written at once, with the steps done since the last write, in one
    transaction whose status read is the cancel check, when that last write is older than
    ``interval``: every boundary of steps slower than that is written as it happens. So is the
    start of a workflow's turning points (the first step that changes the site, the point of no
    return), whatever the time: what a failure means for the tenant, and where its retry
    resumes, depend on whether the job reached them. Other quick steps are kept here and written
    with the next write (a later step's start, the job's end, a stop), so a job of quick steps
    costs a few commits, not one per step. Between writes, the cancel check is the watch's.

    A step whose start is kept is written once it has run for ``interval``: when the driver next
    asks ``should_stop`` (both drivers ask several times a second), or, for a step that never
    asks (a platform step, a hung command), at the next heartbeat (``write_overdue``, from the
    heartbeat's thread: every write holds the journal's lock). What is kept is forgotten only
    once it is written.

    A worker that dies loses what is kept here: the job is reaped as lost in the last step on
    record, and its retry resumes there, running again the steps done since. Steps are written
    to run again (each looks at what exists first), and no turning point is ever among them.
    """

    def __init__(
        self, writer: StepWriter, watch: StatusWatch, job_id: uuid.UUID, worker: str, workflow: Workflow, interval: float
    ):
        self.writer = writer
        self.watch = watch
        self.job_id = job_id
        self.worker = worker
        self.workflow = workflow
        self.interval = interval
        self._kept: dict[int, StepRecord] = {}
        self._written_at = time.monotonic()  # the claim has just written the job
        self._lock = threading.Lock()

    def begin(self, position: int, step: Step) -> JobStatus | None:
        """Start a step; returns the job's status, and only ``running`` lets the step run."""
        with self._lock:
            if self._overdue() or self.workflow.is_turning_point(step.name):
                status = self.writer.write_steps(self.job_id, self.worker, self._records(), StepRecord.started(position, step))
                self._wrote(status)
                return status
            status = self.watch.status()
            if status == JobStatus.RUNNING:
                self._kept[position] = StepRecord.started(position, step)
            return status

    def should_stop(self) -> bool:
        """The check a driver makes inside its step, which also writes what is kept once it is due."""
        if self._kept and self._overdue():
            return self.flush() != JobStatus.RUNNING
        return self.watch.status() != JobStatus.RUNNING

    def complete(self, position: int, output: str) -> None:
        with self._lock:
            # A start still kept goes out with the end; one already written stays as it is.
            started = self._kept.get(position)
            self._kept[position] = StepRecord(
                position,
                self.workflow.steps[position].name,
                StepStatus.COMPLETED,
                started_at=started.started_at if started else None,
                finished_at=utcnow(),
                output=output,
                progress=self.workflow.progress_after(position + 1),
            )

    def skip(self, position: int, message: str) -> None:
        name = self.workflow.steps[position].name
        with self._lock:
            self._kept[position] = StepRecord(position, name, StepStatus.SKIPPED, finished_at=utcnow(), message=message)

    def flush(self, writer: StepWriter | None = None) -> JobStatus | None:
        """Write what is kept now (with ``writer``, or the runner's); the job's status as read with
        the write (None: no longer ours)."""
        with self._lock:
            return self._write(writer or self.writer)

    def write_overdue(self, writer: StepWriter) -> None:
        """From another thread, with a writer of its own: write what is kept if it is due, unless
        the runner is writing right now (then it is being written anyway)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._kept and self._overdue():
                self._write(writer)
        finally:
            self._lock.release()

    @contextmanager
    def written_by_caller(self) -> Iterator[list[StepRecord]]:
        """What is kept, for a write the caller makes (the job's completion); forgotten once the
        write returned, kept if it raised."""
        with self._lock:
            yield self._records()
            self._kept.clear()

    def _write(self, writer: StepWriter) -> JobStatus | None:
        status = writer.write_steps(self.job_id, self.worker, self._records())
        self._wrote(status)
        return status

    def _records(self) -> list[StepRecord]:
        return list(self._kept.values())

    def _overdue(self) -> bool:
        return time.monotonic() - self._written_at >= self.interval

    def _wrote(self, status: JobStatus | None) -> None:
        """After a write returned (one for a job no longer ours wrote nothing, and nothing is
        worth keeping for it either)."""
        self._kept.clear()
        self._written_at = time.monotonic()
        self.watch.saw(status)
