"""ProvisioningService: the only writer of jobs, steps and tenant states.

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

from sqlalchemy import Executable, Insert, Update, case, delete, func, insert, or_, select, update
from sqlalchemy.engine import CursorResult, Row
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from provisioning import audit, logs
from provisioning.audit import Origin
from provisioning.db import utcnow
from provisioning.enums import JobStatus, JobType, StepStatus, TenantStatus
from provisioning.errors import Conflict, IdempotencyKeyReused, NotFound
from provisioning.job_statements import (
    CLAIM_JOB,
    CLAIMED_COLUMNS,
    COMPLETE_JOB,
    FORGET_ADMIN_PASSWORD,
    INSERT_EVENTS,
    INSERT_JOB_IF_ALLOWED,
    INSERT_STEPS,
    JOB_COLUMNS,
    OWNED_JOB_PROGRESS,
    SET_TENANT_STATUS,
    SET_TENANT_STATUS_KEEPING_A_PASSWORD,
    WRITE_STEP,
)
from provisioning.models import (
    ACTIVE_JOB_STATUSES,
    IdempotencyKey,
    JobEvent,
    JobStep,
    ProvisioningJob,
    Tenant,
)
from provisioning.pg_batching import execute_later
from provisioning.states import RETRYABLE_STATUSES, can_transition
from provisioning.workflows import Step, Workflow, workflow_for

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
MAX_REPUBLISH_DOUBLINGS = 6


class ProvisioningService:
    """Requests, reads and moves jobs through their states on one caller-owned session.

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

    # Requests from API clients and operators.

    def request_job(
        self,
        tenant_id: uuid.UUID,
        job_type: JobType,
        requested_by_id: uuid.UUID | None = None,
        idempotency_key: str | None = None,
        options: dict | None = None,
        actor: str | None = None,
    ) -> ProvisioningJob:
        """Create a pending job, commit it, then publish it.

        With an ``idempotency_key`` already used for the same request, the job that request
        made is returned instead: no second job, no second message. ``actor`` names who asks
        when it is not a user (the backup schedule, say).

        Raises:
            NotFound: no such tenant.
            Conflict: the tenant's state does not allow this job type, or it has an active job.
            IdempotencyKeyReused: the key was used for another request.
        """
        options = options or {}
        fingerprint = " ".join([job_type.value, *(f"{name}={value}" for name, value in sorted(options.items()))])
        if idempotency_key and (earlier := self._replay(tenant_id, idempotency_key, fingerprint)) is not None:
            return earlier
        return self._create_job(tenant_id, job_type, requested_by_id, idempotency_key, fingerprint, options=options, actor=actor)

    def list_jobs(
        self,
        tenant_id: uuid.UUID,
        page: int,
        size: int,
        status: JobStatus | None = None,
        job_type: JobType | None = None,
    ) -> tuple[Sequence[ProvisioningJob], int]:
        """One page of the tenant's jobs, newest first, and the total that match.

        Unfiltered, the total is the tenant's ``job_count``: counting rows would take longer the
        more jobs a tenant has had, on every page.
        """
        conditions = [ProvisioningJob.tenant_id == tenant_id]
        if status is not None:
            conditions.append(ProvisioningJob.status == status)
        if job_type is not None:
            conditions.append(ProvisioningJob.job_type == job_type)
        if len(conditions) == 1:
            total = self.session.scalar(select(Tenant.job_count).where(Tenant.id == tenant_id))
        else:
            total = self.session.scalar(select(func.count()).select_from(ProvisioningJob).where(*conditions))
        jobs = self.session.scalars(
            select(ProvisioningJob)
            .where(*conditions)
            .order_by(ProvisioningJob.created_at.desc(), ProvisioningJob.id.desc())
            .limit(size)
            .offset((page - 1) * size)
        ).all()
        return jobs, total or 0

    def get_job(self, tenant_id: uuid.UUID, job_id: uuid.UUID) -> ProvisioningJob:
        """Raises NotFound for a missing job and for another tenant's job alike."""
        job = self.session.get(ProvisioningJob, job_id, populate_existing=True)
        if job is None or job.tenant_id != tenant_id:
            raise NotFound("job not found")
        return job

    def list_job_steps(self, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Sequence[JobStep]:
        self.get_job(tenant_id, job_id)
        return self.session.scalars(select(JobStep).where(JobStep.job_id == job_id).order_by(JobStep.position)).all()

    def list_job_events(self, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Sequence[JobEvent]:
        self.get_job(tenant_id, job_id)
        # In the order things happened: a worker writes a step's end with the next step's start,
        # so an event recorded meanwhile (a cancel request) can have a smaller id.
        events = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.created_at, JobEvent.id)
        return self.session.scalars(events).all()

    def retry_job(
        self,
        tenant_id: uuid.UUID,
        job_id: uuid.UUID,
        requested_by_id: uuid.UUID | None = None,
        idempotency_key: str | None = None,
    ) -> ProvisioningJob:
        """A new job of the same type and options, linked to the finished one, which keeps its history.

        The retry of a failed job resumes at the step that failed (or the step that step's work
        starts from, see ``Step.redo_from``), unless another job of the tenant ran since: then
        what the failed job left may have changed, and the retry starts from the beginning.

        Raises:
            NotFound: no such job for this tenant.
            Conflict: the job is not failed or completed, or the tenant cannot take it now.
            IdempotencyKeyReused: the key was used for another request.
        """
        fingerprint = f"retry {job_id}"
        if idempotency_key and (earlier := self._replay(tenant_id, idempotency_key, fingerprint)) is not None:
            return earlier
        job = self.get_job(tenant_id, job_id)
        if job.status not in RETRYABLE_STATUSES:
            raise Conflict(f"job is {job.status.value}; only failed or completed jobs can be retried")
        return self._create_job(
            tenant_id, job.job_type, requested_by_id, idempotency_key, fingerprint,
            options=dict(job.options or {}), retry_of=job, resume_from=self._resume_point(job),
        )  # fmt: skip

    def cancel_job(self, tenant_id: uuid.UUID, job_id: uuid.UUID, requested_by_id: uuid.UUID | None = None) -> ProvisioningJob:
        """Cancel at once when pending; ask the worker to stop when running; repeat calls are harmless.

        Raises:
            NotFound: no such job for this tenant.
            Conflict: the job already finished.
        """
        job = self.get_job(tenant_id, job_id)
        # The worker may claim or finish the job between our read and our update: re-read and
        # decide again until one compare-and-set wins or the job is settled.
        for _ in range(3):
            now = utcnow()
            if job.status == JobStatus.PENDING:
                won = self._transition(
                    job_id,
                    {JobStatus.PENDING},
                    JobStatus.CANCELLED,
                    actor=_user(requested_by_id),
                    message="Cancelled before it started",
                    cancel_requested_at=now,
                    completed_at=now,
                )
            elif job.status == JobStatus.RUNNING:
                won = self._transition(
                    job_id,
                    {JobStatus.RUNNING},
                    JobStatus.CANCELLING,
                    actor=_user(requested_by_id),
                    message="Cancel requested; stopping at the next step",
                    cancel_requested_at=now,
                )
            elif job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
                return job
            else:
                raise Conflict(f"job is {job.status.value}; a finished job cannot be cancelled")
            if won and self.origin is not None:
                audit.record(self.session, self.origin, "job.cancelled", tenant_id, f"job {job_id}", job.status.value)
            self.session.commit()
            job = self.get_job(tenant_id, job_id)
            if won:
                return job
        return job

    def republish_pending(self, unclaimed_for: timedelta) -> list[uuid.UUID]:
        """Publish again the pending jobs whose message never reached the broker, or reached it
        longer ago than ``unclaimed_for`` and was never claimed (lost with a broker's memory, or
        acknowledged by a worker that could not record the claim); returns their ids.

        A duplicate message is harmless (the claim lets only one delivery run the job) but not
        free: a job that merely waits in a long queue would collect one per period. So the wait
        doubles with each publish of the same job (``unclaimed_for``, then twice that, ...).
        The first failed publish ends the round: the broker is down, the next sweep tries again.
        """
        now = utcnow()
        candidates = self.session.execute(
            select(ProvisioningJob.id, ProvisioningJob.dispatched_at, ProvisioningJob.dispatch_count, ProvisioningJob.request_id)
            .where(
                ProvisioningJob.status == JobStatus.PENDING,
                or_(ProvisioningJob.dispatched_at.is_(None), ProvisioningJob.dispatched_at < now - unclaimed_for),
            )
            .order_by(ProvisioningJob.created_at)
        ).all()
        self.session.commit()
        published = []
        for job_id, dispatched_at, dispatch_count, request_id in candidates:
            backoff = unclaimed_for * 2 ** min(max(dispatch_count - 1, 0), MAX_REPUBLISH_DOUBLINGS)
            if dispatched_at is not None and dispatched_at >= now - backoff:
                continue
            with logs.bound(request_id=request_id, job_id=job_id):  # the message carries the request's id again
                if self._publish(job_id) is None:
                    break
            published.append(job_id)
        return published

    # Transitions made by the worker that runs a job.

    def start_job(
        self, job_id: uuid.UUID, worker: str, new_admin_password: Callable[[], str | None] = lambda: None
    ) -> Claim | None:
        """Claim a pending job for ``worker``, lay out its steps and start the first one to run;
        None if it is not pending.

        A job that makes the site stores ``new_admin_password()`` (encrypted) as the site's
        admin password with the claim, unless an earlier attempt's is stored: then that one
        stays. Either way it is on record before any step uses it.

        None is the normal answer to a duplicate or late message: the job was already claimed,
        finished or cancelled, and the message must be acknowledged without running anything.

        Raises:
            Conflict: the tenant changed since the request (the job before this one finished in
                between) and no longer allows this job type; the job is failed, saying so.
        """
        now = utcnow()
        claimed = self._move(
            CLAIM_JOB, {"job_id": job_id, "claimer": worker, "now": now}, job_id, {JobStatus.PENDING}, JobStatus.RUNNING,
            actor=f"worker {worker}",
        )  # fmt: skip
        if claimed is None:
            self.session.rollback()
            if self.session.scalar(select(ProvisioningJob.id).where(ProvisioningJob.id == job_id)) is None:
                raise NotFound(f"job {job_id} not found")
            return None
        job = ClaimedJob(**{name: getattr(claimed, name) for name in CLAIMED_COLUMNS})
        slug, stored_password = claimed.slug, claimed.stored_password
        workflow = workflow_for(job.job_type)
        first = workflow.position_of(job.resume_from) if job.resume_from else 0
        if not workflow.allows(job.tenant_status_before):
            error = f"not started: {workflow.refusal} (it became {job.tenant_status_before.value} after the request)"
            self._transition(
                job_id, {JobStatus.RUNNING}, JobStatus.FAILED, actor=f"worker {worker}", detail=error,
                error=error, message="Failed", completed_at=now,
            )  # fmt: skip
            self.session.commit()
            raise Conflict(error)
        # The step the job begins with is started with the claim (unless the job's options skip
        # it: the runner records the skip), so the job is never running without its step on record.
        starting = None if workflow.skips(workflow.steps[first], job.options) else first
        done_before = f"Done by job {job.retry_of_id}, which this retry resumes"
        self._later(
            INSERT_STEPS,
            [
                {"id": uuid.uuid4(), "job_id": job_id, "position": position, "name": step.name, "output": "",
                 "started_at": now if position == starting else None,
                 **({"status": StepStatus.RUNNING if position == starting else StepStatus.PENDING, "message": ""}
                    if position >= first else {"status": StepStatus.SKIPPED, "message": done_before})}
                for position, step in enumerate(workflow.steps)
            ],
        )  # fmt: skip
        if starting is not None:
            self._record(job_id, "step_started", f"worker {worker}", workflow.steps[starting].name)
        if not workflow.needs_admin_password:
            self._set_tenant_status(job.tenant_id, workflow.tenant_on_start)
            self.session.commit()
            return Claim(job, slug, step_started=starting)
        # The claim read the stored password, and no other job of the tenant can store one meanwhile.
        password = stored_password or new_admin_password()
        self._later(
            SET_TENANT_STATUS_KEEPING_A_PASSWORD,
            {"tenant_id": job.tenant_id, "new_status": workflow.tenant_on_start, "now": now, "made": password},
        )
        self.session.commit()
        return Claim(job, slug, password, step_started=starting)

    def beat_heartbeat(self, job_id: uuid.UUID, worker: str) -> Beat | None:
        """Vouch that ``worker`` still runs the job; None once the job is not its running job.

        The answer says when a cancel was requested, so the heartbeat can enforce its grace period.
        """
        row = self.session.execute(
            update(ProvisioningJob)
            .where(
                ProvisioningJob.id == job_id,
                ProvisioningJob.worker == worker,
                ProvisioningJob.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]),
            )
            .values(heartbeat_at=utcnow())
            .returning(ProvisioningJob.cancel_requested_at)
        ).first()
        self.session.commit()
        return None if row is None else Beat(cancel_requested_at=row.cancel_requested_at)

    def reap_lost_jobs(self, lost_after: timedelta) -> list[uuid.UUID]:
        """Fail as lost (``_fail_lost_jobs``) the running or cancelling jobs whose worker has not
        vouched for them in ``lost_after``. A worker that beats again at the last moment wins:
        the heartbeat is part of the compare-and-set."""
        cutoff = utcnow() - lost_after
        # A job claimed before heartbeats existed has none: its start stands in for one.
        last_sign_of_life = func.coalesce(ProvisioningJob.heartbeat_at, ProvisioningJob.started_at)
        return self._fail_lost_jobs(
            [last_sign_of_life < cutoff],
            "sweeper",
            lambda job: f"no heartbeat since {job.heartbeat_at or job.started_at:%Y-%m-%d %H:%M:%S} UTC",
        )

    def fail_interrupted_jobs(self, cause: str, actor: str) -> list[uuid.UUID]:
        """Fail as lost (``_fail_lost_jobs``) every running or cancelling job, for ``cause``: for a
        caller that knows no worker can be running any (the quickstart as it starts, before its
        worker: the embedded broker kept none of their messages either)."""
        return self._fail_lost_jobs([], actor, lambda _job: cause)

    def _fail_lost_jobs(self, conditions: Sequence, actor: str, cause: Callable[[ProvisioningJob], str]) -> list[uuid.UUID]:
        """Fail the running or cancelling jobs that match ``conditions`` as jobs whose worker is
        lost; returns their ids. The error names the worker, the step it was in and the
        ``cause``; that step is failed with it, so a retry resumes there; the tenant is released
        as for any failure in that step. The one path for every job that lost its worker.
        """
        lost = self.session.execute(
            select(ProvisioningJob, JobStep.name)
            .outerjoin(JobStep, (JobStep.job_id == ProvisioningJob.id) & (JobStep.status == StepStatus.RUNNING))
            .where(ProvisioningJob.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]), *conditions)
        ).all()
        reaped = []
        for job, step in lost:
            # Every step's start is written before it runs: a job with none running was settling
            # its cancel, or (running) had its first step skipped and was about to start the next.
            where = (
                f"during step {step}" if step
                else "while it settled a cancel" if job.status == JobStatus.CANCELLING
                else "between steps"
            )  # fmt: skip
            error = f"worker {job.worker} was lost {where}: {cause(job)}"
            won = self._transition(
                job.id,
                {JobStatus.RUNNING, JobStatus.CANCELLING},
                JobStatus.FAILED,
                conditions=conditions,
                event="reaped",
                actor=actor,
                detail=error,
                error=error,
                message="Failed",
                completed_at=utcnow(),
            )
            if won:
                self.session.execute(
                    update(JobStep)
                    .where(JobStep.job_id == job.id, JobStep.status == StepStatus.RUNNING)
                    .values(status=StepStatus.FAILED, finished_at=utcnow(), message=error)
                )
                workflow = workflow_for(job.job_type)
                self._set_tenant_status(job.tenant_id, workflow.tenant_after_failure(step, job.tenant_status_before))
                reaped.append(job.id)
                log.warning("job %s: %s", job.id, error)
            self.session.commit()
        return reaped

    # Step writes come from the worker that owns the job; a worker declared lost writes nothing.

    def write_steps(
        self, job_id: uuid.UUID, worker: str, done: Sequence[StepRecord], starting: StepRecord | None = None
    ) -> JobStatus | None:
        """Record the steps ``done`` since the last write (ended: completed or skipped) and, with
        ``starting``, the start of the next one, in one transaction: one commit per step boundary.
        The job's message then says what the starting step does.

        Returns the job's status: ``running`` when the step may run; ``cancelling`` when a cancel
        came (the steps done are still recorded, the starting one is not started); None when the
        job is no longer this worker's (nothing is written).
        """
        status = self._execute(
            OWNED_JOB_PROGRESS,
            {"job_id": job_id, "claimer": worker, "at_least": max((step.progress for step in done), default=0),
             "starting_doing": starting.doing or None if starting else None},
        ).scalar()  # fmt: skip
        if status is None:
            self.session.rollback()
            log.warning("job %s: no longer run by %s; its steps are not recorded", job_id, worker)
            return None
        if starting is not None and status == JobStatus.RUNNING:
            done = [*done, starting]
        self._write_steps(job_id, worker, done)
        self.session.commit()
        return status

    def end_step(self, job_id: uuid.UUID, worker: str, position: int, status: StepStatus, message: str, output: str = "") -> bool:
        """Record a step that ended other than completed (failed, cancelled), with what it printed."""
        if not self._owns(job_id, worker):
            return False
        name = self._update_step(job_id, position, status=status, finished_at=utcnow(), message=message, output=_tail(output))
        self._record(job_id, f"step_{status.value}", f"worker {worker}", f"{name}: {message}")
        self.session.commit()
        return True

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
                 "step_started_at": step.started_at, "step_finished_at": step.finished_at, "step_output": _tail(step.output),
                 "step_message": step.message}
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

    def get_job_status(self, job_id: uuid.UUID) -> JobStatus:
        """The job's status as committed now (ends the read's transaction, so the next one is fresh)."""
        status = self.session.scalar(select(ProvisioningJob.status).where(ProvisioningJob.id == job_id))
        self.session.commit()
        return status

    def complete_job(self, job_id: uuid.UUID, worker: str, done: Sequence[StepRecord] = ()) -> bool:
        """Record the last steps and mark the job completed, in one transaction; False when a cancel
        got there first (the steps are still recorded) or the job is no longer this worker's.

        The compare-and-set comes first: naming the worker, it is also the ownership check and
        holds the job's row for the rest of the transaction.
        """
        completed = self._move(
            COMPLETE_JOB, {"job_id": job_id, "claimer": worker, "now": utcnow()}, job_id, {JobStatus.RUNNING},
            JobStatus.COMPLETED, actor=f"worker {worker}", record=False,
        )  # fmt: skip
        if completed is None:
            self.session.rollback()
            self.write_steps(job_id, worker, done)
            return False
        completion = self._event(job_id, "completed", f"worker {worker}", status=JobStatus.COMPLETED)
        self._write_steps(job_id, worker, done, then=completion)
        self._set_tenant_status(completed.tenant_id, workflow_for(completed.job_type).tenant_on_success)
        self.session.commit()
        return True

    def fail_job(
        self, job_id: uuid.UUID, worker: str, error: str, tenant_status: TenantStatus | None, done: Sequence[StepRecord] = ()
    ) -> bool:
        """Record the steps ``done`` since the last write (the failed one among them) and mark the
        running or cancelling job failed with ``error``, putting the tenant where the runner
        decided, in one transaction: the job is never on record as running with its failed step
        ended. False when the job is no longer ``worker``'s (nothing is written).
        """
        jobs = ProvisioningJob.__table__
        at_least = max((step.progress for step in done), default=0)
        statement = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]))
            .values(
                status=JobStatus.FAILED, error=error, message="Failed", completed_at=utcnow(),
                progress=case((jobs.c.progress < at_least, at_least), else_=jobs.c.progress),
            )
            .returning(jobs.c.tenant_id)
        )  # fmt: skip
        sources = {JobStatus.RUNNING, JobStatus.CANCELLING}
        failed = self._move(statement, {}, job_id, sources, JobStatus.FAILED, f"worker {worker}", error, record=False)
        if failed is None:
            self.session.rollback()
            return False
        failure = self._event(job_id, "failed", f"worker {worker}", error, status=JobStatus.FAILED)
        self._write_steps(job_id, worker, done, then=failure)
        self._set_tenant_status(failed.tenant_id, tenant_status)
        self.session.commit()
        return True

    def finish_cancel(self, job_id: uuid.UUID, tenant_status: TenantStatus | None, message: str) -> bool:
        """Settle a cancelling job as cancelled and put the tenant where the runner decided."""
        job = self.session.get(ProvisioningJob, job_id)
        won = self._transition(
            job_id, {JobStatus.CANCELLING}, JobStatus.CANCELLED, actor=f"worker {job.worker}", detail=message,
            message=message, completed_at=utcnow(),
        )  # fmt: skip
        if won:
            self._set_tenant_status(job.tenant_id, tenant_status)
        self.session.commit()
        return won

    def prune_idempotency_keys(self) -> int:
        """Forget the idempotency keys past their expiry; returns how many."""
        result = self.session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= utcnow()))
        self.session.commit()
        return result.rowcount

    # Helpers.

    def _create_job(
        self,
        tenant_id: uuid.UUID,
        job_type: JobType,
        requested_by_id: uuid.UUID | None,
        idempotency_key: str | None,
        fingerprint: str,
        options: dict,
        retry_of: ProvisioningJob | None = None,
        resume_from: str | None = None,
        actor: str | None = None,
    ) -> ProvisioningJob:
        retry_of_id = retry_of.id if retry_of else None
        workflow = workflow_for(job_type)
        now = utcnow()
        # Written with plain INSERTs, not the ORM's unit of work: this is the hottest write path.
        job = ProvisioningJob(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            job_type=job_type,
            status=JobStatus.PENDING,
            progress=0,
            message="Waiting for a worker",
            error=None,
            requested_by_id=requested_by_id,
            retry_of_id=retry_of_id,
            resume_from=resume_from,
            options=options,
            request_id=logs.current("request_id"),
            # Marked as sent in the same commit as the job itself: one commit, not two, per request.
            dispatched_at=now if self.dispatch is not None else None,
            dispatch_count=1 if self.dispatch is not None else 0,
            created_at=now,
        )
        try:
            if not self._insert_if_allowed(job, workflow):
                self.session.rollback()
                status = self.session.scalar(select(Tenant.status).where(Tenant.id == tenant_id))
                if status is None:
                    raise NotFound("tenant not found")
                if workflow.allows(status):  # it changed between the insert and this read
                    raise Conflict(f"cannot start {job_type.value}: the tenant's state changed meanwhile; ask again")
                raise Conflict(f"cannot start {job_type.value}: {workflow.refusal} (it is {status.value})")
            if idempotency_key:
                # An expired key may be used again: its old row goes in the same transaction.
                self._execute(
                    delete(IdempotencyKey.__table__).where(
                        IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == idempotency_key,
                        IdempotencyKey.expires_at <= now,
                    )
                )  # fmt: skip
                self._execute(
                    insert(IdempotencyKey.__table__),
                    {"id": uuid.uuid4(), "tenant_id": tenant_id, "key": idempotency_key, "request_fingerprint": fingerprint,
                     "job_id": job.id, "created_at": now, "expires_at": now + self.idempotency_ttl},
                )  # fmt: skip
            actor = actor or _user(requested_by_id)
            detail = f"retry of {retry_of_id}" + (f", resuming at {resume_from}" if resume_from else "") if retry_of_id else ""
            self._insert_events(
                [self._event(job.id, "created", actor, detail, status=JobStatus.PENDING)]
                + ([self._event(job.id, "dispatched", "system")] if self.dispatch is not None else [])
                + ([self._event(retry_of_id, "retried", actor, f"retried as {job.id}")] if retry_of_id else [])
            )
            if self.origin is not None:
                action = "job.retried" if retry_of_id else "job.requested"
                audit.record(self.session, self.origin, action, tenant_id, f"job {job.id}", job_type.value)
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            # Two requests with one key raced: the loser answers with the winner's job.
            if idempotency_key and (earlier := self._replay(tenant_id, idempotency_key, fingerprint)) is not None:
                return earlier
            # The partial unique index refused a second active job for this tenant.
            active = self._active_job(tenant_id)
            if active is None:  # it ended in the meantime: a quick job can, between our insert and this read
                raise Conflict("the tenant had an active job when this request was made; it has ended since") from None
            raise Conflict(
                f"the tenant already has an active job: {active.id} ({active.job_type.value}, {active.status.value})"
            ) from None
        log.info(
            "job %s: %s requested by %s", job.id, job_type.value, actor,
            extra={"job_id": job.id, "tenant_id": tenant_id, "job_type": job_type.value},
        )  # fmt: skip
        if self.dispatch is not None:
            self._publish_new(job)
        return job

    def _insert_if_allowed(self, job: ProvisioningJob, workflow: Workflow) -> bool:
        """Insert the job's row only if its tenant exists and is in a state the job type allows:
        the check and the write in one statement (``INSERT ... SELECT ... FROM tenants WHERE``)."""
        values = {column: getattr(job, column) for column in JOB_COLUMNS}
        allowed = {"allowed_tenant_states": sorted(workflow.allowed_tenant_states)}
        return self._execute(INSERT_JOB_IF_ALLOWED, values | allowed).rowcount == 1

    def _resume_point(self, job: ProvisioningJob) -> str | None:
        """Where a retry of ``job`` starts: None (the beginning) unless it failed in a step and is
        still the tenant's latest job."""
        if job.status != JobStatus.FAILED:
            return None
        failed_step = self.session.scalar(
            select(JobStep.name).where(JobStep.job_id == job.id, JobStep.status == StepStatus.FAILED)
        )
        newer = self.session.scalar(
            select(ProvisioningJob.id).where(
                ProvisioningJob.tenant_id == job.tenant_id, ProvisioningJob.created_at > job.created_at
            )
        )
        if failed_step is None or newer is not None:
            return None
        resume_from = workflow_for(job.job_type).resume_point(failed_step)
        return None if resume_from == workflow_for(job.job_type).step_names[0] else resume_from

    def _replay(self, tenant_id: uuid.UUID, idempotency_key: str, fingerprint: str) -> ProvisioningJob | None:
        """The job an earlier request with this key made, if the key is known and unexpired."""
        earlier = self.session.scalar(
            select(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id,
                IdempotencyKey.key == idempotency_key,
                IdempotencyKey.expires_at > utcnow(),
            )
        )
        if earlier is None:
            return None
        if earlier.request_fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {idempotency_key!r} was first used for another request ({earlier.request_fingerprint})"
            )
        return self.session.get(ProvisioningJob, earlier.job_id, populate_existing=True)

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

    def _active_job(self, tenant_id: uuid.UUID) -> ProvisioningJob | None:
        return self.session.scalars(
            select(ProvisioningJob).where(ProvisioningJob.tenant_id == tenant_id, ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES))
        ).first()

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

    def _publish_new(self, job: ProvisioningJob) -> None:
        """Publish a job created as dispatched (one commit for both, the common case); when the
        broker fails, take the mark back, so the next sweep publishes it."""
        if self._send(job.id):
            return
        try:
            # Only while pending: a publish that raised may still have got through, and the job run.
            cleared = self.session.execute(
                update(ProvisioningJob)
                .where(ProvisioningJob.id == job.id, ProvisioningJob.status == JobStatus.PENDING)
                .values(dispatched_at=None, dispatch_count=0)
            ).rowcount
            if not cleared:
                self.session.rollback()
                return
            self._record(job.id, "dispatch_failed", "system", "the broker did not take the message; the sweeper will")
            self.session.commit()
        except DBAPIError:
            # Marked dispatched but not sent: the sweeper publishes it once it looks unclaimed.
            self.session.rollback()
            log.exception("job %s: not published, and clearing its dispatch mark failed", job.id)
            return
        set_committed_value(job, "dispatched_at", None)


def _user(user_id: uuid.UUID | None) -> str:
    return f"user {user_id}" if user_id else "operator"


def _tail(output: str, max_lines: int = 40, max_chars: int = 4000) -> str:
    """The last lines of a step's output: what an operator needs to see why it stopped."""
    return "\n".join(output.splitlines()[-max_lines:])[-max_chars:]
