"""The job records every part of the service writes through: the compare-and-set of a job's
status from the one table of allowed moves (``states``), its events, its steps, its tenant's
status and the publishing of its task, in one caller-owned unit of work; and the records a
worker passes around (StepRecord, ClaimedJob, Claim, Beat).

Every job status change is a compare-and-set ``UPDATE ... WHERE id = :id AND status IN
(:sources)`` that must change exactly one row, its sources read from the table: built by
``moves.compare_and_set``, through ``JobRecords.transition`` or, for a step boundary, a completion
and a failure, once (``moves.Boundary``). Losing that race means another process (a duplicate
delivery, a concurrent cancel) got there first: it is logged and the caller moves on.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Collection, Sequence

from sqlalchemy import (
    Executable,
    bindparam,
    case,
    func,
    insert,
    update,
)
from sqlalchemy.engine import CursorResult, Row
from sqlalchemy.orm import Session

from provisioning.accounts.audit import Origin
from provisioning.enums import JobStatus, JobType, StepStatus, TenantStatus
from provisioning.jobs.moves import TENANT_MOVE, Boundary, compare_and_set
from provisioning.jobs.workflows import Step
from provisioning.models import JobEvent, JobStep, ProvisioningJob, Tenant
from provisioning.platform.db import UnitOfWork, as_text, utcnow

log = logging.getLogger(__name__)

jobs = ProvisioningJob.__table__
steps = JobStep.__table__
tenants = Tenant.__table__

# Sends a job's message to the queue of a server, by name: (job id, server name).
Dispatch = Callable[[uuid.UUID, str], None]
# A pending job's message once it is sent (until then it may say why it is held).
WAITING = "Waiting for a worker"
# A running job between two steps that one server's worker gave up for another's (``handed_to``).
HANDED_OVER = (jobs.c.status == JobStatus.RUNNING) & jobs.c.worker.is_(None) & jobs.c.handed_to.is_not(None)
# The event a status change is recorded as.
EVENT_OF_STATUS = {
    JobStatus.RUNNING: "claimed",
    JobStatus.CANCELLING: "cancel_requested",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
}


@dataclass(frozen=True)
class StepRecord:
    """A step's state as its runner knows it and has not written yet: started (``running``, with
    what the job is ``doing`` meanwhile), or ended (completed, skipped or failed) with when, what
    it printed (and why, when it did not complete) and the job's progress after it."""

    position: int
    name: str
    status: StepStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: str = ""
    message: str = ""
    progress: int = 0
    doing: str = ""

    @classmethod
    def started(cls, position: int, step: Step) -> "StepRecord":
        return cls(position, step.name, StepStatus.RUNNING, started_at=utcnow(), doing=step.message)

    def events(self) -> list[tuple[str, str, datetime]]:
        """The job events this state stands for, as (kind, detail, when)."""
        made = [("step_started", self.name, self.started_at)] if self.started_at else []
        if self.status == StepStatus.COMPLETED:
            made.append(("step_completed", self.name, self.finished_at))
        elif self.status in (StepStatus.SKIPPED, StepStatus.FAILED):
            made.append((f"step_{self.status.value}", f"{self.name}: {self.message}", self.finished_at))
        return made


@dataclass(frozen=True)
class ClaimedJob:
    """A job as its claim wrote it, as far as its runner reads it (a model object costs more to
    make than a quick step's write)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    job_type: JobType
    resume_from: str | None
    retry_of_id: uuid.UUID | None
    options: dict
    tenant_status_before: TenantStatus | None
    request_id: str | None


@dataclass(frozen=True)
class Claim:
    """A job as its claim wrote it, its tenant's slug, for a job that makes the site, the site's
    admin password (encrypted; None without a key), and the position of the step whose start the
    claim wrote (None: the job's options skip the step it begins with, or it was taken over):
    what a runner needs to start it."""

    job: ClaimedJob
    tenant_slug: str
    admin_password_encrypted: str | None = field(default=None, repr=False)
    step_started: int | None = None
    # A job taken over from another server's worker (``JobExecution.take_over``): the step it goes on at.
    continues_at: int | None = None


@dataclass(frozen=True)
class Beat:
    """What a heartbeat learns: when the job's cancel was requested, if it was."""

    cancel_requested_at: datetime | None


DEFAULT_IDEMPOTENCY_TTL = timedelta(hours=24)

# One step's state, for many steps in one executemany; a start written earlier stays (none is
# given). No bound parameter is named after a column: SQLAlchemy keeps those for the SET clause.
WRITE_STEP = (
    update(steps)
    .where(steps.c.job_id == bindparam("step_job_id"), steps.c.position == bindparam("step_position"))
    .values(
        {name: bindparam(f"step_{name}") for name in ("status", "finished_at", "output", "message")}
        | {"started_at": func.coalesce(bindparam("step_started_at", type_=steps.c.started_at.type), steps.c.started_at)}
    )
)


class JobRecords:
    """The unit of work, the task's publisher and who asks, and the writes the parts of the
    service share: ``JobRequests``, ``JobExecution`` and ``JobRepairs`` build on it.

    Given a bare session, the service makes a unit of work of it (``uow``); either way the caller
    commits. ``dispatch`` publishes a job's task; it runs only after the job's row is committed
    (``UnitOfWork.after_commit``), so a worker can never receive a job it cannot read.
    """

    def __init__(
        self,
        work: Session | UnitOfWork,
        dispatch: Dispatch | None = None,
        idempotency_ttl: timedelta = DEFAULT_IDEMPOTENCY_TTL,
        origin: Origin | None = None,
    ):
        self.uow = work if isinstance(work, UnitOfWork) else UnitOfWork(work)
        self.session = self.uow.session
        self.dispatch = dispatch
        self.idempotency_ttl = idempotency_ttl
        # Who is asking, for the audit trail of job requests; None when it is the platform itself.
        self.origin = origin

    def transition(
        self,
        job_id: uuid.UUID,
        target: JobStatus,
        *,
        sources: Collection[JobStatus] | None = None,
        conditions: Sequence = (),
        returning: Sequence = (),
        actor: str = "system",
        detail: str = "",
        event: str | None = None,
        record: bool = True,
        **values,
    ) -> Row | None:
        """Compare-and-set the job's status to ``target`` from the states the table lets move there
        (or the few of them given as ``sources``), under any further ``conditions``, setting
        ``values``; the row of ``returning`` columns if it moved, else None (logged).

        A move is recorded as an event by ``actor`` (``event``, else the target's), unless the
        caller records it later with others (``record=False``).

        Raises:
            ValueError: ``sources`` names a state that may not move to ``target``.
        """
        moved = self._execute(compare_and_set(job_id, target, sources, conditions, returning, values)).first()
        if moved is None:
            log.info("job %s: not moved to %s, it is no longer where it could move from", job_id, target.value)
            return None
        if record:
            self._record(job_id, event or EVENT_OF_STATUS[target], actor, detail, status=target)
        return moved

    def _execute(self, statement: Executable, parameters: dict | list[dict] | None = None) -> CursorResult:
        """Run a Core statement in the session's transaction, without the ORM's per-statement work
        (a third of the CPU of a short statement): none of these needs ORM objects flushed first."""
        return self.session.connection().execute(statement, parameters)

    def _record(self, job_id: uuid.UUID, kind: str, actor: str, detail: str = "", status: JobStatus | None = None) -> None:
        """Add an event to the transaction."""
        self._insert_events([self._event(job_id, kind, actor, detail, status)])

    @staticmethod
    def _event(
        job_id: uuid.UUID, kind: str, actor: str, detail: str = "", status: JobStatus | None = None, at: datetime | None = None
    ) -> dict:
        """An event's row, for ``_insert_events``. One with the ``status`` the job moved to is
        also that change's announcement, for the event relay to publish once it is committed."""
        return {"job_id": job_id, "kind": kind, "actor": actor, "detail": detail, "created_at": at or utcnow(), "status": status}

    def _insert_events(self, rows: list[dict]) -> None:
        """One statement for all of them, in the order given."""
        if rows:
            self._execute(insert(JobEvent.__table__), rows)

    def _set_tenant_status(self, tenant_id: uuid.UUID, status: TenantStatus | None) -> None:
        """Move the tenant (None: leave it), as ``tenant_move_parameters`` says."""
        if status is not None:
            self._execute(TENANT_MOVE, {"moving_tenant": tenant_id} | tenant_move_parameters(status))

    def _write_steps(self, job_id: uuid.UUID, worker: str, done: Sequence[StepRecord], then: dict | None = None) -> None:
        """Write step states and their events, a statement each for all of them; the caller holds
        the job's row and sets its progress.

        ``then`` is the event of the job's end, written after the steps' events in the same
        statement.
        """
        if done:
            self._execute(
                WRITE_STEP,
                [
                    {"step_job_id": job_id, "step_position": step.position, "step_status": step.status,
                     "step_started_at": step.started_at, "step_finished_at": step.finished_at,
                     "step_output": output_tail(step.output), "step_message": step.message}
                    for step in done
                ],
            )  # fmt: skip
        actor = f"worker {worker}"
        events = [self._event(job_id, kind, actor, detail, at=at) for step in done for kind, detail, at in step.events()]
        self._insert_events(events + [then] if then else events)

    def _move_with_steps(
        self,
        boundary: Boundary,
        parameters: dict,
        worker: str,
        done: Sequence[StepRecord],
        starting: StepRecord | None = None,
        then: dict | None = None,
    ) -> Row | None:
        """Run the ``boundary``'s UPDATE of a job's row with ``parameters`` and, if it changed the
        row, write the steps ``done`` with their events (and then the event ``then``), and
        ``starting`` with its event only if the job is running. None when it changed nothing (and
        nothing is written); else the row it returned.

        On PostgreSQL this is one statement (``Boundary.together``), so a step boundary costs one
        round trip; elsewhere the statements run one after the other.
        """
        if self.session.get_bind().dialect.name != "postgresql":
            moved = self._execute(boundary.job_update, parameters).first()
            if moved is not None:
                ended = [*done, starting] if starting is not None and moved.status == JobStatus.RUNNING else done
                self._write_steps(moved.id, worker, ended, then)
                if boundary.moves_tenant:
                    self._execute(TENANT_MOVE, parameters | {"moving_tenant": moved.tenant_id})
            return moved
        # Each row says whether it is written whatever the job's status ("always"), or only while it runs.
        written = [(step, True) for step in done] + ([(starting, False)] if starting is not None else [])
        job_id, actor = parameters["moving_job"], f"worker {worker}"
        events = [
            (self._event(job_id, kind, actor, detail, at=at), always)
            for step, always in written
            for kind, detail, at in step.events()
        ] + ([(then, True)] if then else [])
        rows = [
            {"position": step.position, "status": step.status.value, "started_at": as_text(step.started_at),
             "finished_at": as_text(step.finished_at), "output": output_tail(step.output), "message": step.message,
             "always": always}
            for step, always in written
        ]  # fmt: skip
        return self._execute(boundary.together, parameters | {"written": rows, "recorded": recorded_rows(events)}).first()

    def _publish(self, job_id: uuid.UUID, server_name: str) -> datetime | None:
        """Publish the job's message to its server's queue, then mark it sent (and record that) in the caller's
        transaction; None, with nothing marked, if the broker failed.

        The mark follows the publish: a crash between the two leaves a job published but
        unmarked, which the next sweep publishes again (a harmless duplicate), never a job marked
        but unpublished that would wait for the sweeper's long period. The mark is set only while
        the job is pending (or handed over): a worker may have claimed it already.
        """
        if self.dispatch is None:
            return None
        try:
            self.dispatch(job_id, server_name)
        except Exception:
            # The row is committed, so nothing is lost: the job stays pending, unmarked, for a re-publish.
            log.exception("job %s: publishing failed; it stays pending until it is re-published", job_id)
            return None
        dispatched_at = utcnow()
        mark = (
            update(jobs)
            .where(jobs.c.id == job_id, (jobs.c.status == JobStatus.PENDING) | HANDED_OVER)
            .values(
                dispatched_at=dispatched_at,
                dispatch_count=jobs.c.dispatch_count + 1,
                message=case((jobs.c.status == JobStatus.PENDING, WAITING), else_=jobs.c.message),
            )
        )
        event = insert(JobEvent.__table__).values(self._event(job_id, "dispatched", "system"))
        if self.session.get_bind().dialect.name == "postgresql":
            self._execute(event.add_cte(mark.cte("marked")))  # one statement: one round trip
        else:
            self._execute(mark)
            self._execute(event)
        return dispatched_at


def tenant_move_parameters(status: TenantStatus | None, new_password: str | None = None) -> dict:
    """The parameters of a tenant's move (``moves.tenant_move``) to ``status`` (None: it stays),
    the site's admin password becoming ``new_password`` if given. A deleted site's admin password
    is forgotten, whichever job deleted it (completed, or cancelled past its point of no return).
    A tenant left without a site (deleted, or back to pending: its create was cancelled) leaves its
    server, whose room it took (see ``servers.placement``); one that settles anywhere but moving or
    failed (a move's retry finishes it there) gives up the room a move kept for it elsewhere."""
    return {
        "tenant_status": status,
        "tenant_moved_at": utcnow(),
        "new_password": new_password,
        "forget_password": status == TenantStatus.DELETED,
        "leave_server": status in (TenantStatus.DELETED, TenantStatus.PENDING),
        "leave_target": status not in (None, TenantStatus.MOVING, TenantStatus.FAILED),
    }


def recorded_rows(events: Sequence[tuple[dict, bool]]) -> list[dict]:
    """Events (``JobRecords._event`` rows, each with whether it is written whatever the job's
    status) as the JSON rows (``:recorded``) the statements of ``moves`` insert them from."""
    return [
        {"kind": event["kind"], "actor": event["actor"], "detail": event["detail"], "created_at": as_text(event["created_at"]),
         "status": event["status"] and event["status"].value, "always": always}
        for event, always in events
    ]  # fmt: skip


def actor_of_user(user_id: uuid.UUID | None) -> str:
    return f"user {user_id}" if user_id else "operator"


def output_tail(output: str, max_lines: int = 40, max_chars: int = 4000) -> str:
    """The last lines of a step's output: what an operator needs to see why it stopped."""
    return "\n".join(output.splitlines()[-max_lines:])[-max_chars:]
