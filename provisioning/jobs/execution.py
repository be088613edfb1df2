"""Job execution, as the worker that runs a job records it: the claim, each step boundary, heartbeats
and the job's end. A worker writes only while the job is its own: one declared lost writes nothing."""

from __future__ import annotations

import logging
import uuid
from typing import Callable, Sequence

from sqlalchemy import Integer, Text, bindparam, case, func, insert, select, update

from provisioning.enums import JobStatus, StepStatus, TenantStatus
from provisioning.errors import Conflict, NotFound
from provisioning.jobs.moves import LAY_OUT, TENANT_MOVE, Boundary, compare_and_set, status_in
from provisioning.jobs.records import (
    Beat,
    Claim,
    ClaimedJob,
    JobRecords,
    StepRecord,
    jobs,
    output_tail,
    recorded_rows,
    steps,
    tenant_move_parameters,
    tenants,
)
from provisioning.jobs.states import HELD_BY_A_WORKER
from provisioning.jobs.workflows import workflow_for
from provisioning.platform.db import UTCDateTime, as_text, utcnow

log = logging.getLogger(__name__)

# What the runner of a job reads of it (ClaimedJob).
CLAIMED_COLUMNS = ("id", "tenant_id", "job_type", "resume_from", "retry_of_id", "options", "tenant_status_before", "request_id")


def _at_least(progress):
    """The job's progress, raised to ``progress`` if it is lower: progress never goes back."""
    return case((jobs.c.progress < progress, progress), else_=jobs.c.progress)


def _of_its_tenant(column):
    return select(column).where(tenants.c.id == jobs.c.tenant_id).scalar_subquery()


# The claim, and the writes of a step boundary, a completion and a failure, built once (see
# ``Boundary``). A bound parameter is never named after a column of the updated table: SQLAlchemy
# keeps those for SET.
CLAIM = compare_and_set(
    bindparam("claimed_job"), JobStatus.RUNNING,
    returning=(
        *(jobs.c[name] for name in CLAIMED_COLUMNS),
        _of_its_tenant(tenants.c.slug).label("slug"),
        _of_its_tenant(tenants.c.admin_password_encrypted).label("stored_password"),
    ),
    values={"worker": bindparam("claimer", type_=Text), "started_at": bindparam("now", type_=UTCDateTime),
            "heartbeat_at": bindparam("now", type_=UTCDateTime), "tenant_status_before": _of_its_tenant(tenants.c.status)},
)  # fmt: skip
HELD = status_in(HELD_BY_A_WORKER)
# Its progress, never lowered, and what it is doing now: the step starting (only while running: a
# cancelling job starts nothing), else as it was. Returning the status, this one write is also the
# ownership check and the cancel check.
STEP_BOUNDARY = Boundary(
    update(jobs)
    .where(jobs.c.id == bindparam("moving_job"), jobs.c.worker == bindparam("claimer"), HELD)
    .values(
        progress=_at_least(bindparam("at_least", type_=Integer)),
        message=case(
            (jobs.c.status == JobStatus.RUNNING, func.coalesce(bindparam("doing", type_=Text), jobs.c.message)),
            else_=jobs.c.message,
        ),
    )
    .returning(jobs.c.id, jobs.c.status)
)
COMPLETION = Boundary(
    compare_and_set(
        bindparam("moving_job"), JobStatus.COMPLETED, conditions=[jobs.c.worker == bindparam("claimer")],
        returning=(jobs.c.tenant_id,),
        values={"progress": 100, "message": "Completed", "completed_at": bindparam("now", type_=UTCDateTime)},
    ),
    moves_tenant=True,
)  # fmt: skip
FAILURE = Boundary(
    compare_and_set(
        bindparam("moving_job"), JobStatus.FAILED, conditions=[jobs.c.worker == bindparam("claimer")],
        returning=(jobs.c.tenant_id,),
        values={"error": bindparam("failure", type_=Text), "message": "Failed",
                "completed_at": bindparam("now", type_=UTCDateTime), "progress": _at_least(bindparam("at_least", type_=Integer))},
    ),
    moves_tenant=True,
)  # fmt: skip


# A job that spans servers, between two steps: given up by the worker of one server for the worker
# of the next step's server to take over (``handed_to``), still running, held by no worker.
HAND_OVER = (
    update(jobs)
    .where(jobs.c.id == bindparam("moving_job"), jobs.c.worker == bindparam("claimer"), jobs.c.status == JobStatus.RUNNING)
    .values(worker=None, handed_to=bindparam("to_server", type_=Text), message=bindparam("doing", type_=Text),
            heartbeat_at=bindparam("now", type_=UTCDateTime), dispatched_at=None, dispatch_count=0)
    .returning(jobs.c.id)
)  # fmt: skip
TAKE_OVER = (
    update(jobs)
    .where(
        jobs.c.id == bindparam("moving_job"), jobs.c.status == JobStatus.RUNNING, jobs.c.worker.is_(None),
        jobs.c.handed_to == bindparam("server", type_=Text),
    )
    .values(worker=bindparam("claimer", type_=Text), handed_to=None, heartbeat_at=bindparam("now", type_=UTCDateTime))
    .returning(*(jobs.c[name] for name in CLAIMED_COLUMNS), _of_its_tenant(tenants.c.slug).label("slug"))
)  # fmt: skip


class JobExecution(JobRecords):
    """The writes of the worker that runs a job, each meant as one short transaction of the
    caller's (``PatientService`` commits each call)."""

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
                between) and no longer allows this job type; the job is failed, saying so (in
                the transaction: the caller commits that answer, see ``PatientService``).
        """
        now = utcnow()
        actor = f"worker {worker}"
        claimed = self._execute(CLAIM, {"claimed_job": job_id, "claimer": worker, "now": now}).first()
        if claimed is None:
            if self.session.scalar(select(jobs.c.id).where(jobs.c.id == job_id)) is None:
                raise NotFound(f"job {job_id} not found")
            return None
        job = ClaimedJob(**{name: getattr(claimed, name) for name in CLAIMED_COLUMNS})
        workflow = workflow_for(job.job_type)
        first = workflow.position_of(job.resume_from) if job.resume_from else 0
        claim_event = self._event(job_id, "claimed", actor, status=JobStatus.RUNNING, at=now)
        if not workflow.allows(job.tenant_status_before):
            became = job.tenant_status_before
            error = f"not started: {workflow.refusal_for(became)} (it became {became.value} after the request)"
            self._insert_events([claim_event])
            self.transition(
                job_id, JobStatus.FAILED, actor=actor, detail=error, error=error, message="Failed", completed_at=now
            )  # fmt: skip
            raise Conflict(error)
        # The step the job begins with is started with the claim (unless the job's options skip
        # it: the runner records the skip), so the job is never running without its step on record.
        starting = None if workflow.skips(workflow.steps[first], job.options) else first
        done_before = f"Done (or skipped) by job {job.retry_of_id}, which this retry resumes"
        laid_out = [
            {"id": uuid.uuid4(), "job_id": job_id, "position": position, "name": step.name, "output": "",
             "started_at": now if position == starting else None, "finished_at": None,
             **({"status": StepStatus.RUNNING if position == starting else StepStatus.PENDING, "message": ""}
                if position >= first else {"status": StepStatus.SKIPPED, "message": done_before})}
            for position, step in enumerate(workflow.steps)
        ]  # fmt: skip
        events = [claim_event]
        if starting is not None:
            events.append(self._event(job_id, "step_started", actor, workflow.steps[starting].name, at=now))
        # A job that makes the site: the claim read the stored password, and no other job of the
        # tenant can store one meanwhile: an earlier attempt's stays the site's, else a new one becomes it.
        password = claimed.stored_password if workflow.needs_admin_password else None
        new_password = new_admin_password() if workflow.needs_admin_password and password is None else None
        tenant = tenant_move_parameters(workflow.tenant_on_start, new_password)
        # What the job is doing now: the step it starts at (the first, or the one a retry resumes).
        self._lay_out(job, workflow.steps[first].message, laid_out, events, tenant)
        return Claim(job, claimed.slug, password or new_password, step_started=starting)

    def hand_over(self, job_id: uuid.UUID, worker: str, to_server: str, step_name: str) -> bool:
        """Give the running job up for its next step, ``step_name``, which the worker of
        ``to_server`` runs: no worker holds it until that one takes it over; False if it is not
        ``worker``'s running job any more (a cancel came: the caller settles it). Marked unsent,
        as a new job is until its publish (``_publish``), which the caller makes next."""
        doing = f"Handed over to server {to_server} for step {step_name}"
        parameters = {"moving_job": job_id, "claimer": worker, "to_server": to_server, "doing": doing, "now": utcnow()}
        if self._execute(HAND_OVER, parameters).first() is None:
            return False
        self._record(job_id, "handed_over", f"worker {worker}", doing)
        return True

    def send_handed_over(self, job_id: uuid.UUID, to_server: str) -> bool:
        """Publish the job handed to ``to_server`` to its queue, once the hand-over is committed,
        and mark it sent; False if the broker did not take it (the sweeper sends it later)."""
        return self._publish(job_id, to_server) is not None

    def take_over(self, job_id: uuid.UUID, worker: str, server_name: str) -> Claim | None:
        """Take over the job another server's worker handed to ``server_name``'s; None if it was not
        handed here (a duplicate message, or another worker of this server was first). The claim
        goes on at the first step not done."""
        row = self._execute(TAKE_OVER, {"moving_job": job_id, "claimer": worker, "server": server_name, "now": utcnow()}).first()
        if row is None:
            return None
        # Not a retry's take-over of a failed job's work: that was done by the worker that claimed it.
        job = ClaimedJob(**{name: getattr(row, name) for name in CLAIMED_COLUMNS} | {"resume_from": None})
        done = self.session.scalar(
            select(func.count()).select_from(steps).where(
                steps.c.job_id == job_id, steps.c.status.in_([StepStatus.COMPLETED, StepStatus.SKIPPED])
            )
        )
        self._record(job_id, "taken_over", f"worker {worker}", f"on server {server_name}")
        return Claim(job, row.slug, continues_at=done)

    def _lay_out(self, job: ClaimedJob, doing: str, laid_out: list[dict], events: list[dict], tenant: dict) -> None:
        """Write what the claimed ``job`` is ``doing``, its steps ``laid_out``, its ``events`` and
        its ``tenant``'s move: on PostgreSQL in one statement (``LAY_OUT``)."""
        if self.session.get_bind().dialect.name != "postgresql":
            self._execute(update(jobs).where(jobs.c.id == job.id).values(message=doing))
            self._execute(insert(steps), laid_out)
            self._insert_events(events)
            self._execute(TENANT_MOVE, tenant | {"moving_tenant": job.tenant_id})
            return
        rows = [
            {"id": str(step["id"]), "position": step["position"], "name": step["name"], "status": step["status"].value,
             "started_at": as_text(step["started_at"]), "message": step["message"]}
            for step in laid_out
        ]  # fmt: skip
        recorded = recorded_rows([(event, True) for event in events])
        self._execute(LAY_OUT, {"laid_out_job": job.id, "doing": doing, "laid_out": rows, "recorded": recorded} | tenant)

    def beat_heartbeat(self, job_id: uuid.UUID, worker: str) -> Beat | None:
        """Vouch that ``worker`` still runs the job; None once the job is not its running job.

        The answer says when a cancel was requested, so the heartbeat can enforce its grace period.
        """
        row = self._execute(
            update(jobs).where(*_held_by(job_id, worker)).values(heartbeat_at=utcnow()).returning(jobs.c.cancel_requested_at)
        ).first()
        return None if row is None else Beat(cancel_requested_at=row.cancel_requested_at)

    def look_at_job(self, job_id: uuid.UUID, worker: str) -> Beat | None:
        """What a beat would learn, read without vouching for the job (the heartbeat's looks between
        its beats): None once the job is not ``worker``'s running job."""
        row = self._execute(select(jobs.c.cancel_requested_at).where(*_held_by(job_id, worker))).first()
        return None if row is None else Beat(cancel_requested_at=row.cancel_requested_at)

    def write_steps(
        self, job_id: uuid.UUID, worker: str, done: Sequence[StepRecord], starting: StepRecord | None = None
    ) -> JobStatus | None:
        """Record the steps ``done`` since the last write (ended: completed or skipped) and, with
        ``starting``, the start of the next one, in the caller's transaction: one commit per step boundary.
        The job's message then says what the starting step does.

        Returns the job's status: ``running`` when the step may run; ``cancelling`` when a cancel
        came (the steps done are still recorded, the starting one is not started); None when the
        job is no longer this worker's (nothing is written).
        """
        at_least = max((step.progress for step in done), default=0)
        doing = starting.doing or None if starting else None
        parameters = {"moving_job": job_id, "claimer": worker, "at_least": at_least, "doing": doing}
        moved = self._move_with_steps(STEP_BOUNDARY, parameters, worker, done, starting)
        if moved is None:
            log.warning("job %s: no longer run by %s; its steps are not recorded", job_id, worker)
            return None
        return moved.status

    def end_step(self, job_id: uuid.UUID, worker: str, position: int, status: StepStatus, message: str, output: str = "") -> bool:
        """Record a step that ended other than completed (failed, cancelled), with what it printed;
        False, with nothing written, when the job is no longer ``worker``'s.

        The job's row is locked first, so the sweeper cannot fail it in the middle of this write.
        """
        owned = self._execute(
            select(jobs.c.id)
            .where(*_held_by(job_id, worker))
            .with_for_update()
        ).first()
        if owned is None:
            log.warning("job %s: no longer run by %s; its step is not recorded", job_id, worker)
            return False
        name = self._execute(
            update(steps)
            .where(steps.c.job_id == job_id, steps.c.position == position)
            .values(status=status, finished_at=utcnow(), message=message, output=output_tail(output))
            .returning(steps.c.name)
        ).scalar_one()
        self._record(job_id, f"step_{status.value}", f"worker {worker}", f"{name}: {message}")
        return True

    def complete_job(
        self, job_id: uuid.UUID, worker: str, tenant_status: TenantStatus | None, done: Sequence[StepRecord] = ()
    ) -> bool:
        """Record the last steps, mark the job completed and move the tenant to ``tenant_status``,
        in one transaction; False when a cancel got there first (the steps are still recorded) or
        the job is no longer this worker's.

        The compare-and-set comes first: naming the worker, it is also the ownership check and
        holds the job's row for the rest of the transaction.
        """
        completion = self._event(job_id, "completed", f"worker {worker}", status=JobStatus.COMPLETED)
        parameters = {"moving_job": job_id, "claimer": worker, "now": utcnow()} | tenant_move_parameters(tenant_status)
        if self._move_with_steps(COMPLETION, parameters, worker, done, then=completion) is None:
            self.write_steps(job_id, worker, done)
            return False
        return True

    def fail_job(
        self, job_id: uuid.UUID, worker: str, error: str, tenant_status: TenantStatus | None, done: Sequence[StepRecord] = ()
    ) -> bool:
        """Record the steps ``done`` since the last write (the failed one among them) and mark the
        running or cancelling job failed with ``error``, putting the tenant where the runner
        decided, in one transaction: the job is never on record as running with its failed step
        ended. False when the job is no longer ``worker``'s (nothing is written).
        """
        at_least = max((step.progress for step in done), default=0)
        failure = self._event(job_id, "failed", f"worker {worker}", error, status=JobStatus.FAILED)
        parameters = {"moving_job": job_id, "claimer": worker, "failure": error, "now": utcnow(), "at_least": at_least}
        parameters |= tenant_move_parameters(tenant_status)
        return self._move_with_steps(FAILURE, parameters, worker, done, then=failure) is not None

    def finish_cancel(self, job_id: uuid.UUID, tenant_status: TenantStatus | None, message: str) -> bool:
        """Settle a cancelling job as cancelled and put the tenant where the runner decided."""
        cancelled = self.transition(
            job_id, JobStatus.CANCELLED, sources={JobStatus.CANCELLING}, returning=(jobs.c.worker, jobs.c.tenant_id),
            record=False, message=message, completed_at=utcnow(),
        )  # fmt: skip
        if cancelled is None:
            return False
        self._record(job_id, "cancelled", f"worker {cancelled.worker}", message, status=JobStatus.CANCELLED)
        self._set_tenant_status(cancelled.tenant_id, tenant_status)
        return True


def _held_by(job_id: uuid.UUID, worker: str) -> tuple:
    """The job, while ``worker`` holds it (running or cancelling)."""
    return jobs.c.id == job_id, jobs.c.worker == worker, HELD
