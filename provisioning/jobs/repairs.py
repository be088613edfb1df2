"""Job repairs, as the sweeper (and the quickstart as it starts) makes them: jobs whose worker was
lost, pending jobs whose message was lost or whose server is down, expired idempotency keys."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Callable, Sequence

from sqlalchemy import delete, func, or_, select, update

from provisioning.enums import JobStatus, ServerStatus, StepStatus
from provisioning.jobs.records import HANDED_OVER, JobRecords
from provisioning.jobs.states import HELD_BY_A_WORKER
from provisioning.jobs.workflows import workflow_for
from provisioning.models import IdempotencyKey, JobStep, ProvisioningJob, Server, Tenant
from provisioning.platform import logs
from provisioning.platform.db import utcnow
from provisioning.servers.placement import Seat

log = logging.getLogger(__name__)

MAX_REPUBLISH_DOUBLINGS = 6


class JobRepairs(JobRecords):
    """What makes "nothing lost" true after crashes; every answer is a compare-and-set or a
    harmless duplicate message, so repairs may run from many processes at once. The caller
    commits after each repair (the sweeper does)."""

    def reap_lost_jobs(self, lost_after: timedelta) -> list[uuid.UUID]:
        """Fail as lost (``_fail_lost_jobs``) the running or cancelling jobs whose worker has not
        vouched for them in ``lost_after``. A worker that beats again at the last moment wins:
        the heartbeat is part of the compare-and-set."""
        cutoff = utcnow() - lost_after
        # A job claimed before heartbeats existed has none: its start stands in for one.
        last_sign_of_life = func.coalesce(ProvisioningJob.heartbeat_at, ProvisioningJob.started_at)
        # A job handed to another server's worker has no worker to lose: it waits (``republish_pending``).
        return self._fail_lost_jobs(
            [last_sign_of_life < cutoff, ~HANDED_OVER],
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
            .where(ProvisioningJob.status.in_(sorted(HELD_BY_A_WORKER)), *conditions)
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
            won = self.transition(
                job.id,
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
        return reaped

    def republish_pending(self, unclaimed_for: timedelta) -> list[uuid.UUID]:
        """Publish again the pending jobs whose message never reached the broker, or reached it
        longer ago than ``unclaimed_for`` and was never claimed (lost with a broker's memory, or
        acknowledged by a worker that could not record the claim); returns their ids.

        A duplicate message is harmless (the claim lets only one delivery run the job) but not
        free: a job that merely waits in a long queue would collect one per period. So the wait
        doubles with each publish of the same job (``unclaimed_for``, then twice that, ...).
        The first failed publish ends the round: the broker is down, the next sweep tries again.
        A job is marked sent after its publish (``_publish``), in the caller's transaction; a job
        never marked (its request's process died between its commit and its publish) is
        published at the next sweep, whatever ``unclaimed_for``. Each goes to its server's queue;
        the jobs of a server that is down are held instead (``hold_jobs_of_down_servers``), and
        published by the first sweep after it is active again.

        A job handed to another server's worker between two steps (a move's, ``handed_to``) waits
        for that worker as a pending job waits for a claim: however long the server's queue, it is
        never failed for waiting, and a hand-over whose message was lost is sent again the same way.
        """
        now = utcnow()
        unclaimed = or_(ProvisioningJob.dispatched_at.is_(None), ProvisioningJob.dispatched_at < now - unclaimed_for)
        candidates = sorted(
            self._waiting_jobs(
                (ProvisioningJob.id, ProvisioningJob.dispatched_at, ProvisioningJob.dispatch_count,
                 ProvisioningJob.request_id, ProvisioningJob.created_at),
                Server.status != ServerStatus.DOWN, unclaimed,
            ),
            key=lambda row: row.created_at,
        )  # fmt: skip
        published = []
        for job_id, dispatched_at, dispatch_count, request_id, _created_at, server_name in candidates:
            backoff = unclaimed_for * 2 ** min(max(dispatch_count - 1, 0), MAX_REPUBLISH_DOUBLINGS)
            if dispatched_at is not None and dispatched_at >= now - backoff:
                continue
            with logs.bound(request_id=request_id, job_id=job_id):  # the message carries the request's id again
                if self._publish(job_id, server_name) is None:
                    break
            published.append(job_id)
        return published

    def hold_jobs_of_down_servers(self) -> list[uuid.UUID]:
        """Say on each pending job of a server that is down (and each job handed to one) that it is
        held, and why, and mark it unsent, so the first sweep after the server is active again
        publishes it at once; returns the ids of the jobs newly held."""
        newly = []
        for job_id, server_name in self._waiting_jobs((ProvisioningJob.id,), Server.status == ServerStatus.DOWN):
            if self.hold(job_id, Seat(server_name, ServerStatus.DOWN)):
                newly.append(job_id)
        return newly

    def _waiting_jobs(self, columns: Sequence, *conditions) -> list:
        """The jobs that wait for a server's worker, each row ``columns`` and that server's name: the
        pending ones (their tenant's server) and the handed-over ones (the server handed to), that
        meet ``conditions`` (on the job and on ``Server``)."""
        pending = (
            select(*columns, Server.name)
            .join(Tenant, Tenant.id == ProvisioningJob.tenant_id)
            .join(Server, Server.id == Tenant.server_id)
            .where(ProvisioningJob.status == JobStatus.PENDING, *conditions)
        )
        handed_over = select(*columns, Server.name).join(Server, Server.name == ProvisioningJob.handed_to)
        return [*self.session.execute(pending).all(), *self.session.execute(handed_over.where(HANDED_OVER, *conditions)).all()]

    def hold(self, job_id: uuid.UUID, seat: Seat) -> bool:
        """Hold one pending (or handed-over) job of the down server ``seat``; False if it was held
        already or waits no more."""
        message = seat.hold_message()
        held = self.session.execute(
            update(ProvisioningJob.__table__)
            .where(
                ProvisioningJob.id == job_id,
                (ProvisioningJob.status == JobStatus.PENDING) | HANDED_OVER,
                or_(ProvisioningJob.message != message, ProvisioningJob.dispatched_at.is_not(None)),
            )
            .values(message=message, dispatched_at=None)
        )
        if held.rowcount:
            self._record(job_id, "held", "system", message)
            log.info("job %s: %s", job_id, message)
        return bool(held.rowcount)

    def prune_idempotency_keys(self) -> int:
        """Forget the idempotency keys past their expiry; returns how many."""
        return self.session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= utcnow())).rowcount
