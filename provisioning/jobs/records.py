"""The job records every part of the service writes through: the compare-and-set of a job's
status from the one table of allowed moves (``states``), its events, its steps, its tenant's
status and the publishing of its task, on one caller-owned session; and the records a worker
passes around (StepRecord, ClaimedJob, Claim, Beat).

Every job status change is a compare-and-set ``UPDATE ... WHERE id = :id AND status IN
(:expected)`` that must change exactly one row. Losing that race means another process (a
duplicate delivery, a concurrent cancel) got there first: it is logged and the caller moves on.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Sequence

from sqlalchemy import Executable, Insert, Update, select, update
from sqlalchemy.engine import CursorResult, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from provisioning.accounts.audit import Origin
from provisioning.enums import JobStatus, JobType, StepStatus, TenantStatus
from provisioning.jobs.statements import FORGET_ADMIN_PASSWORD, INSERT_EVENTS, SET_TENANT_STATUS, WRITE_STEP
from provisioning.jobs.states import can_transition
from provisioning.jobs.workflows import Step
from provisioning.models import JobStep, ProvisioningJob
from provisioning.platform.db import utcnow
from provisioning.platform.pg_batching import execute_later

log = logging.getLogger(__name__)

Dispatch = Callable[[uuid.UUID], None]
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
    claim wrote (None: the job's options skip the step it begins with): what a runner needs to
    start it."""

    job: ClaimedJob
    tenant_slug: str
    admin_password_encrypted: str | None = field(default=None, repr=False)
    step_started: int | None = None


@dataclass(frozen=True)
class Beat:
    """What a heartbeat learns: when the job's cancel was requested, if it was."""

    cancel_requested_at: datetime | None


DEFAULT_IDEMPOTENCY_TTL = timedelta(hours=24)


class JobRecords:
    """The session, the task's publisher and who asks, and the writes the parts of the service
    share: ``JobRequests``, ``JobExecution`` and ``JobRepairs`` build on it.

    ``dispatch`` publishes a job's task; it is called only after the job's row is committed,
    so a worker can never receive a job it cannot read. A failed publish leaves the job
    ``pending`` with no ``dispatched_at``, for a later re-publish.
    """

    def __init__(
        self,
        session: Session,
        dispatch: Dispatch | None = None,
        idempotency_ttl: timedelta = DEFAULT_IDEMPOTENCY_TTL,
        origin: Origin | None = None,
    ):
        self.session = session
        self.dispatch = dispatch
        self.idempotency_ttl = idempotency_ttl
        # Who is asking, for the audit trail of job requests; None when it is the platform itself.
        self.origin = origin

    def _transition(
        self,
        job_id: uuid.UUID,
        sources: set[JobStatus],
        target: JobStatus,
        conditions: Sequence = (),
        actor: str = "system",
        detail: str = "",
        event: str | None = None,
        **values,
    ) -> bool:
        """Compare-and-set the job's status from one of ``sources`` to ``target`` (and any further
        ``conditions``); True if it moved, and then the move is recorded as an event by ``actor``."""
        jobs = ProvisioningJob.__table__
        statement = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(sources), *conditions)
            .values(status=target, **values)
            .returning(jobs.c.id)
        )
        return self._move(statement, {}, job_id, sources, target, actor, detail, event) is not None

    def _move(
        self,
        statement: Update,
        parameters: dict,
        job_id: uuid.UUID,
        sources: set[JobStatus],
        target: JobStatus,
        actor: str = "system",
        detail: str = "",
        event: str | None = None,
        record: bool = True,
    ) -> Row | None:
        """Run a compare-and-set UPDATE of the job's status from one of ``sources`` to ``target``
        (``_transition``'s, or one built once: the claim's, the completion's). If it moved, the
        move is recorded as an event by ``actor`` (unless the caller records it later,
        ``record=False``) and the row it returned is returned; None if it did not move."""
        if not all(can_transition(source, target) for source in sources):
            raise ValueError(f"the state machine has no move from {sorted(sources)} to {target}")
        moved = self._execute(statement, parameters).first()
        if moved is None:
            log.info("job %s: not moved to %s, it is no longer in %s", job_id, target.value, sorted(s.value for s in sources))
            return None
        if record:
            self._record(job_id, event or EVENT_OF_STATUS[target], actor, detail, status=target)
        return moved

    def _execute(self, statement: Executable, parameters: dict | list[dict] | None = None) -> CursorResult:
        """Run a Core statement in the session's transaction, without the ORM's per-statement work
        (a third of the CPU of a short statement): none of these needs ORM objects flushed first."""
        return self.session.connection().execute(statement, parameters)

    def _later(self, statement: Insert | Update, parameters: dict | list[dict]) -> None:
        """Run a statement whose result nobody reads, with the transaction's next round trip."""
        execute_later(self.session.connection(), statement, parameters)

    def _record(self, job_id: uuid.UUID, kind: str, actor: str, detail: str = "", status: JobStatus | None = None) -> None:
        """Add an event to the transaction."""
        self._insert_events([self._event(job_id, kind, actor, detail, status)])

    @staticmethod
    def _event(job_id: uuid.UUID, kind: str, actor: str, detail: str = "", status: JobStatus | None = None) -> dict:
        """An event's row, for ``_insert_events``. One with the ``status`` the job moved to is
        also that change's announcement, for the event relay to publish once it is committed."""
        return {"job_id": job_id, "kind": kind, "actor": actor, "detail": detail, "created_at": utcnow(), "status": status}

    def _insert_events(self, rows: list[dict]) -> None:
        """One statement for all of them, in the order given."""
        if rows:
            self._later(INSERT_EVENTS, rows)

    def _update_step(self, job_id: uuid.UUID, position: int, **values) -> str:
        """Update one step and return its name."""
        steps = JobStep.__table__
        return self._execute(
            update(steps).where(steps.c.job_id == job_id, steps.c.position == position).values(**values).returning(steps.c.name)
        ).scalar_one()

    def _set_tenant_status(self, tenant_id: uuid.UUID, status: TenantStatus | None) -> None:
        """Move the tenant (None: leave it); a deleted site's admin password is forgotten, whichever
        job deleted it (completed, or cancelled past its point of no return)."""
        if status is not None:
            self._later(SET_TENANT_STATUS, {"tenant_id": tenant_id, "new_status": status, "now": utcnow()})
        if status == TenantStatus.DELETED:
            self._later(FORGET_ADMIN_PASSWORD, {"tenant_id": tenant_id, "now": utcnow()})

    def _owns(self, job_id: uuid.UUID, worker: str) -> bool:
        """Lock the job's row if ``worker`` runs it, so the sweeper cannot fail it mid-write; False,
        with nothing held, when it does not."""
        jobs = ProvisioningJob.__table__
        owned = self._execute(
            select(jobs.c.id)
            .where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]))
            .with_for_update()
        ).first()
        if owned is None:
            self.session.rollback()
            log.warning("job %s: no longer run by %s; its step is not recorded", job_id, worker)
        return owned is not None

    def _write_steps(self, job_id: uuid.UUID, worker: str, done: Sequence[StepRecord], then: dict | None = None) -> None:
        """Write step states and their events, a statement each for all of them; the caller holds
        the job's row, sets its progress and commits.

        ``then`` is the event of the job's completion, written after the steps' events in the
        same statement.
        """
        if not done:
            self._insert_events([then] if then else [])
            return
        self._later(
            WRITE_STEP,
            [
                {"step_job_id": job_id, "step_position": step.position, "step_status": step.status,
                 "step_started_at": step.started_at, "step_finished_at": step.finished_at,
                 "step_output": output_tail(step.output), "step_message": step.message}
                for step in done
            ],
        )  # fmt: skip
        actor = f"worker {worker}"
        events = [
            {"job_id": job_id, "kind": kind, "actor": actor, "detail": detail, "created_at": at, "status": None}
            for step in done
            for kind, detail, at in step.events()
        ]
        self._insert_events(events + [then] if then else events)

    def _send(self, job_id: uuid.UUID) -> bool:
        """Publish the job's message; False (and logged) if the broker failed."""
        try:
            self.dispatch(job_id)
        except Exception:
            # The row is committed, so nothing is lost: the job stays pending for a re-publish.
            log.exception("job %s: publishing failed; it stays pending until it is re-published", job_id)
            return False
        return True

    def _publish(self, job_id: uuid.UUID) -> datetime | None:
        """Publish a job's message again and record when; None if the broker failed."""
        if self.dispatch is None or not self._send(job_id):
            return None
        dispatched_at = utcnow()
        try:
            self.session.execute(
                update(ProvisioningJob)
                .where(ProvisioningJob.id == job_id)
                .values(dispatched_at=dispatched_at, dispatch_count=ProvisioningJob.dispatch_count + 1)
            )
            self._record(job_id, "dispatched", "system")
            self.session.commit()
        except DBAPIError:
            # The message is out; not recording it only means a harmless duplicate later.
            self.session.rollback()
            log.exception("job %s: published, but recording when failed", job_id)
            return None
        return dispatched_at


def actor_of_user(user_id: uuid.UUID | None) -> str:
    return f"user {user_id}" if user_id else "operator"


def output_tail(output: str, max_lines: int = 40, max_chars: int = 4000) -> str:
    """The last lines of a step's output: what an operator needs to see why it stopped."""
    return "\n".join(output.splitlines()[-max_lines:])[-max_chars:]
