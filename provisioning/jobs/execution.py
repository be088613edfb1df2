"""Job execution, as the worker that runs a job records it: the claim, each step boundary, heartbeats
and the job's end. A worker writes only while the job is its own: one declared lost writes nothing."""

from __future__ import annotations

import logging
import uuid
from typing import Callable, Sequence

from sqlalchemy import case, select, update

from provisioning.enums import JobStatus, StepStatus, TenantStatus
from provisioning.errors import Conflict, NotFound
from provisioning.jobs.records import Beat, Claim, ClaimedJob, JobRecords, StepRecord, output_tail
from provisioning.jobs.statements import (
    CLAIM_JOB,
    CLAIMED_COLUMNS,
    COMPLETE_JOB,
    INSERT_STEPS,
    OWNED_JOB_PROGRESS,
    SET_TENANT_STATUS_KEEPING_A_PASSWORD,
)
from provisioning.jobs.workflows import workflow_for
from provisioning.models import ProvisioningJob
from provisioning.platform.db import utcnow

log = logging.getLogger(__name__)


class JobExecution(JobRecords):
    """The writes of the worker that runs a job, each one short transaction."""

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
        name = self._update_step(
            job_id, position, status=status, finished_at=utcnow(), message=message, output=output_tail(output)
        )
        self._record(job_id, f"step_{status.value}", f"worker {worker}", f"{name}: {message}")
        self.session.commit()
        return True

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
