"""Job requests, as API clients and operators make them: ask for a job, read jobs, retry and cancel."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Sequence

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from provisioning.accounts import audit
from provisioning.backups.book import BACKUP_ID
from provisioning.backups.proofs import RestoreProofs
from provisioning.enums import JobStatus, JobType, StepStatus
from provisioning.errors import Conflict, IdempotencyKeyReused, NotFound
from provisioning.jobs.job_inserts import AUDIT_COLUMNS, EVENT_COLUMNS, INSERT_JOB_IF_ALLOWED, JOB_COLUMNS, MAKE_JOB
from provisioning.jobs.records import WAITING, JobRecords, actor_of_user
from provisioning.jobs.seats import check_cancellable, move_options, release_siteless_tenant, reserve_standby, seat_of_job
from provisioning.jobs.states import RETRYABLE_STATUSES
from provisioning.jobs.workflows import RESTORES, Workflow, workflow_for
from provisioning.models import ACTIVE_JOB_STATUSES, IdempotencyKey, JobEvent, JobStep, ProvisioningJob, Tenant
from provisioning.platform import logs
from provisioning.platform.db import utcnow

log = logging.getLogger(__name__)

class JobRequests(JobRecords):
    """What the API and the command line ask of jobs: each request is checked against the tenant's
    state and its active job in the same statement that records it; the caller commits it, and
    then its message is published (``UnitOfWork.after_commit``)."""

    def request_job(
        self,
        tenant_id: uuid.UUID,
        job_type: JobType,
        requested_by_id: uuid.UUID | None = None,
        idempotency_key: str | None = None,
        options: dict | None = None,
        actor: str | None = None,
    ) -> ProvisioningJob:
        """Create a pending job, to be published once the caller commits it.

        With an ``idempotency_key`` already used for the same request, the job that request
        made is returned instead: no second job, no second message. ``actor`` names who asks
        when it is not a user (the backup schedule, say).

        A restore (``RESTORES``) names one of the tenant's completed backups in its option
        ``backup_id``; a restore drill without one drills the newest. A move keeps room on the
        server it moves to (its option ``server``; by default the emptiest other one), and
        records the one it moves from. A tenant on no server yet
        is placed on one (``servers.placement``; options ``labels`` and ``server``). A job of a
        server that is down is held: it waits, pending and unsent, until the server is active.

        Raises:
            NotFound: no such tenant, or the tenant has no backup ``backup_id`` (another
                tenant's looks the same).
            Conflict: the tenant's state does not allow this job type, or it has an active job;
                the backup to restore is not completed, or there is none to drill; no server
                has room for the tenant.
            IdempotencyKeyReused: the key was used for another request.
        """
        options = options or {}
        fingerprint = " ".join([job_type.value, *(f"{name}={value}" for name, value in sorted(options.items()))])
        if idempotency_key and (earlier := self._replay(tenant_id, idempotency_key, fingerprint)) is not None:
            return earlier
        if job_type in RESTORES:
            options = {**options, BACKUP_ID: str(self._backup_to_restore(tenant_id, job_type, options.get(BACKUP_ID)))}
        if job_type == JobType.MOVE_SITE:
            # The tenant's state, if it refuses the job, is the first reason to give.
            workflow = workflow_for(job_type)
            if not workflow.allows(self.session.scalar(select(Tenant.status).where(Tenant.id == tenant_id))):
                self._refuse(tenant_id, job_type, workflow)
            options = move_options(self.session, tenant_id, options)
        return self._create_job(tenant_id, job_type, requested_by_id, idempotency_key, fingerprint, options=options, actor=actor)

    def _backup_to_restore(self, tenant_id: uuid.UUID, job_type: JobType, backup_id: object) -> uuid.UUID:
        """The id of the completed backup a restore asks for (a drill: by default, the newest)."""
        proofs = RestoreProofs(self.session)
        if backup_id is None:
            if job_type == JobType.RESTORE_DRILL and (newest := proofs.newest(tenant_id)) is not None:
                return newest.id
            # The tenant's state, if it refuses the job, is the first reason to give.
            workflow = workflow_for(job_type)
            if not workflow.allows(self.session.scalar(select(Tenant.status).where(Tenant.id == tenant_id))):
                self._refuse(tenant_id, job_type, workflow)
            raise Conflict(f"cannot start {job_type.value}: the tenant has no completed backup to restore")
        return proofs.restorable(tenant_id, uuid.UUID(str(backup_id))).id

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
        # decide again until one compare-and-set wins or the job is settled. (The caller commits.)
        for _ in range(3):
            now = utcnow()
            if job.status == JobStatus.PENDING:
                won = self.transition(
                    job_id,
                    JobStatus.CANCELLED,
                    sources={JobStatus.PENDING},
                    actor=actor_of_user(requested_by_id),
                    message="Cancelled before it started",
                    cancel_requested_at=now,
                    completed_at=now,
                )
                if won:
                    release_siteless_tenant(self.session, tenant_id)
            elif job.status == JobStatus.RUNNING:
                check_cancellable(self.session, job)
                won = self.transition(
                    job_id,
                    JobStatus.CANCELLING,
                    actor=actor_of_user(requested_by_id),
                    message="Cancel requested; stopping at the next step",
                    cancel_requested_at=now,
                )
            elif job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
                return job
            else:
                raise Conflict(f"job is {job.status.value}; a finished job cannot be cancelled")
            if won and self.origin is not None:
                audit.record(self.session, self.origin, "job.cancelled", tenant_id, f"job {job_id}", job.status.value)
            # Read committed: each read sees what the worker committed meanwhile.
            job = self.get_job(tenant_id, job_id)
            if won:
                return job
        return job

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
        seat = seat_of_job(self.session, tenant_id, workflow, options, refuse=lambda: self._refuse(tenant_id, job_type, workflow))
        if job_type == JobType.CREATE_SITE and retry_of is None:
            options = reserve_standby(self.session, tenant_id, seat, options)
        now = utcnow()
        # Written with plain INSERTs, not the ORM's unit of work: this is the hottest write path.
        job = ProvisioningJob(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            job_type=job_type,
            status=JobStatus.PENDING,
            progress=0,
            message=seat.hold_message() if seat.held else WAITING,
            error=None,
            requested_by_id=requested_by_id,
            retry_of_id=retry_of_id,
            resume_from=resume_from,
            options=options,
            request_id=logs.current("request_id"),
            # Marked as sent only once it is (``_publish``, after the commit).
            dispatched_at=None,
            dispatch_count=0,
            created_at=now,
        )
        actor = actor or actor_of_user(requested_by_id)
        detail = f"retry of {retry_of_id}" + (f", resuming at {resume_from}" if resume_from else "") if retry_of_id else ""
        created = self._event(job.id, "created", actor, detail, status=JobStatus.PENDING)
        audited = None
        if self.origin is not None:
            action = "job.retried" if retry_of_id else "job.requested"
            audited = audit.entry(self.origin, action, tenant_id, f"job {job.id}", job_type.value)
        try:
            if idempotency_key:
                # A savepoint: should another request hold the key, the transaction stays usable.
                with self.session.begin_nested():
                    inserted = self._insert_if_allowed(job, workflow, created, audited)
                    if inserted:
                        self._record_key(tenant_id, idempotency_key, fingerprint, job.id, now)
            else:
                inserted = self._insert_if_allowed(job, workflow, created, audited)
        except IntegrityError:
            # Two requests with one key raced: the loser answers with the winner's job.
            if idempotency_key and (earlier := self._replay(tenant_id, idempotency_key, fingerprint)) is not None:
                return earlier
            # Another request of the tenant inserted its active job between our check and our write.
            raise Conflict("the tenant already has an active job, requested at the same moment as this one") from None
        if not inserted:
            # A request with the same key may have made its job since our first look: that is the answer.
            if idempotency_key and (earlier := self._replay(tenant_id, idempotency_key, fingerprint)) is not None:
                return earlier
            self._refuse(tenant_id, job_type, workflow)
        if retry_of_id:
            self._record(retry_of_id, "retried", actor, f"retried as {job.id}")
        log.info(
            "job %s: %s requested by %s", job.id, job_type.value, actor,
            extra={"job_id": job.id, "tenant_id": tenant_id, "job_type": job_type.value},
        )  # fmt: skip
        if self.dispatch is not None and not seat.held:
            self.uow.after_commit(lambda: self._publish_new(job, seat.name))
        return job

    def _publish_new(self, job: ProvisioningJob, server_name: str) -> None:
        """Publish a committed job and mark it sent; the job answered to the client says whether it was.

        Runs after the job's commit, in a transaction of its own: in autocommit, as the mark and
        its event need no transaction around them (one round trip, not three, per request).
        """
        self.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        job.dispatched_at = self._publish(job.id, server_name)
        if job.dispatched_at is None:
            self._record(job.id, "dispatch_failed", "system", "the broker did not take the message; the sweeper will")
        else:
            job.dispatch_count = 1

    def _record_key(self, tenant_id: uuid.UUID, key: str, fingerprint: str, job_id: uuid.UUID, now: datetime) -> None:
        """Record the idempotency key of the job just made; an expired key may be used again: its
        old row goes first. Raises IntegrityError when another request holds the key."""
        keys = IdempotencyKey.__table__
        self._execute(delete(keys).where(keys.c.tenant_id == tenant_id, keys.c.key == key, keys.c.expires_at <= now))
        self._execute(
            insert(keys),
            {"id": uuid.uuid4(), "tenant_id": tenant_id, "key": key, "request_fingerprint": fingerprint,
             "job_id": job_id, "created_at": now, "expires_at": now + self.idempotency_ttl},
        )  # fmt: skip

    def _refuse(self, tenant_id: uuid.UUID, job_type: JobType, workflow: Workflow) -> None:
        """Say why the job's INSERT found its tenant missing, in the wrong state or busy.

        Raises:
            NotFound: no such tenant.
            Conflict: always otherwise.
        """
        status = self.session.scalar(select(Tenant.status).where(Tenant.id == tenant_id))
        if status is None:
            raise NotFound("tenant not found")
        if not workflow.allows(status):
            raise Conflict(f"cannot start {job_type.value}: {workflow.refusal_for(status)} (it is {status.value})")
        if (active := self._active_job(tenant_id)) is not None:
            raise Conflict(f"the tenant already has an active job: {active.id} ({active.job_type.value}, {active.status.value})")
        # The tenant's state, or its active job, changed between the insert and these reads.
        raise Conflict(f"cannot start {job_type.value}: the tenant changed meanwhile; ask again")

    def _insert_if_allowed(self, job: ProvisioningJob, workflow: Workflow, created: dict, audited: dict | None) -> bool:
        """Insert the job's row only if its tenant exists, is in a state the job type allows and
        has no active job: the checks and the write in one statement (``INSERT ... SELECT ... FROM
        tenants WHERE``); and with it, its ``created`` event and the audit entry ``audited`` (if
        any). On PostgreSQL, all three are one statement (``MAKE_JOB``)."""
        values = {column: getattr(job, column) for column in JOB_COLUMNS}
        values["allowed_tenant_states"] = sorted(workflow.allowed_tenant_states)
        if self.session.get_bind().dialect.name != "postgresql":
            if self._execute(INSERT_JOB_IF_ALLOWED, values).first() is None:
                return False
            self._insert_events([created])
            if audited is not None:
                self._execute(audit.INSERT_ENTRY, audited)
            return True
        values |= {f"event_{column}": created[column] for column in EVENT_COLUMNS}
        values |= {f"audit_{column}": (audited or {}).get(column) for column in AUDIT_COLUMNS}
        return self._execute(MAKE_JOB, values | {"audited": audited is not None}).first() is not None

    def _resume_point(self, job: ProvisioningJob) -> str | None:
        """Where a retry of ``job`` starts: None (the beginning) unless it failed in a step and is
        still the tenant's latest job.

        A job that undoes its failures (a restore) starts over unless its tenant is failed: its
        failure was undone, or came before it changed anything, and the site has been in use
        since, so what it did before (a safety backup) is out of date. A failed tenant's site was
        left half done (its worker stopped or was lost): the retry resumes there.
        """
        if job.status != JobStatus.FAILED:
            return None
        workflow = workflow_for(job.job_type)
        if workflow.undoes_failures:
            tenant_status = self.session.scalar(select(Tenant.status).where(Tenant.id == job.tenant_id))
            if tenant_status != workflow.tenant_on_failure:
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
        resume_from = workflow.resume_point(failed_step)
        return None if resume_from == workflow.step_names[0] else resume_from

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

    def _active_job(self, tenant_id: uuid.UUID) -> ProvisioningJob | None:
        return self.session.scalars(
            select(ProvisioningJob).where(ProvisioningJob.tenant_id == tenant_id, ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES))
        ).first()
