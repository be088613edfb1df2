"""StepJournal: what a runner writes about its job's steps, and when."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator, Protocol

from provisioning.enums import JobStatus, StepStatus
from provisioning.jobs.records import StepRecord
from provisioning.jobs.workflows import Step, Workflow
from provisioning.platform.db import utcnow


class StepWriter(Protocol):
    def write_steps(
        self, job_id: uuid.UUID, worker: str, done: list[StepRecord], starting: StepRecord | None = None
    ) -> JobStatus | None: ...


class StatusWatch(Protocol):
    def saw(self, status: JobStatus | None) -> None: ...


class StepJournal:
    """The steps a runner went through and has not written yet.

    Every step's start is written before the step runs, in one transaction with the steps that
    ended since the last write (the step before it, and any skipped in between); that write's
    status read is the cancel check. So no step starts once a cancel was accepted, and the step
    in progress is always on record: a worker lost in it is reaped naming it, and its retry
    resumes there. The job's claim writes the start of the step it begins with
    (``started``). A step's end waits for the next write: the next step's start, or the
    job's completion, failure or stop.
    """

    def __init__(
        self, writer: StepWriter, watch: StatusWatch, job_id: uuid.UUID, worker: str, workflow: Workflow, started: int | None
    ):
        self.writer = writer
        self.watch = watch
        self.job_id = job_id
        self.worker = worker
        self.workflow = workflow
        self._started = started
        self._ended: dict[int, StepRecord] = {}

    def begin(self, position: int, step: Step) -> JobStatus | None:
        """Write the step's start; returns the job's status, and only ``running`` lets the step run
        (``cancelling``: the steps ended are written, this one is not started; None: the job is no
        longer this worker's, and nothing is written)."""
        if position == self._started:
            return JobStatus.RUNNING  # the claim wrote this start, and read the job as running
        status = self.writer.write_steps(self.job_id, self.worker, self._records(), StepRecord.started(position, step))
        self._wrote(status)
        return status

    def complete(self, position: int, output: str) -> None:
        self._ended[position] = StepRecord(
            position,
            self.workflow.steps[position].name,
            StepStatus.COMPLETED,
            finished_at=utcnow(),
            output=output,
            progress=self.workflow.progress_after(position + 1),
        )

    def skip(self, position: int, message: str) -> None:
        name = self.workflow.steps[position].name
        self._ended[position] = StepRecord(position, name, StepStatus.SKIPPED, finished_at=utcnow(), message=message)

    def flush(self, writer: StepWriter | None = None) -> JobStatus | None:
        """Write the steps ended (with ``writer``, or the runner's); the job's status as read with
        the write (None: no longer ours)."""
        status = (writer or self.writer).write_steps(self.job_id, self.worker, self._records())
        self._wrote(status)
        return status

    @contextmanager
    def written_by_caller(self) -> Iterator[list[StepRecord]]:
        """The steps ended, for a write the caller makes (the job's completion or failure);
        forgotten once the write returned, kept if it raised."""
        yield self._records()
        self._ended.clear()

    def _records(self) -> list[StepRecord]:
        return list(self._ended.values())

    def _wrote(self, status: JobStatus | None) -> None:
        """After a write returned (one for a job no longer ours wrote nothing, and nothing is
        worth keeping for it either)."""
        self._ended.clear()
        self.watch.saw(status)
