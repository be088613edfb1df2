"""JobRunner: runs one claimed job step by step through a site driver, as a worker does.

Two threads take part, and only the first writes the job's steps:

    the task's thread (JobRunner)                   the process's heartbeat thread (Heartbeat)
    -----------------------------                   ------------------------------------------
    start_job: claim it, start its first step       every JOB_HEARTBEAT_SECONDS, for each job:
    for each step:                                    beat_heartbeat: heartbeat_at = now, and
      write_steps(ended, starting) -> status          the answer: cancel requested at? still ours?
        cancelling: settle the cancel; done                       |
        not ours any more: write nothing; done                    | sets
      driver.run_step(step, context)                              v
        context.should_stop() / must_stop() <-- reads -- StopFlags: cancelled, grace_over,
        StepStopped / StepTerminated: settle              taken_away (and worker_stopping,
          the cancel, or step aside                       set by a SIGTERM: WorkerStop)
        StepFailed: fail_job at this step
      the step's end waits in ``Run.ended``
    complete_job(ended), or settle a cancel that came during the last step

Nothing signals the runner's thread, and only it uses the job's connection. A cancel reaches a
step through the flags within one heartbeat, and a step boundary at once (its write reads the
job's status). The heartbeat commits its beats in a transaction of its own.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

from provisioning.backups.book import BackupBook, Retention, retention_of
from provisioning.backups.offsite import OffsiteStore
from provisioning.backups.steps import BackupSteps
from provisioning.enums import JobStatus, StepStatus, TenantStatus
from provisioning.errors import BackupUnrestorable, Conflict, SiteUnchanged, StepFailed, StepStopped, StepTerminated
from provisioning.jobs.context import JobContext
from provisioning.jobs.execution import JobExecution
from provisioning.jobs.heartbeat import Heartbeat
from provisioning.jobs.patience import PatientService
from provisioning.jobs.platform_steps import PlatformSteps
from provisioning.jobs.records import Claim, ClaimedJob, Dispatch, StepRecord
from provisioning.jobs.routing import JobRouting
from provisioning.jobs.step_interruptions import StopFlags, WorkerStop
from provisioning.jobs.workflows import Step, Workflow, server_of, workflow_for
from provisioning.platform import logs
from provisioning.platform.db import utcnow
from provisioning.platform.settings import DEFAULT_SERVER_NAME, Settings
from provisioning.sites.credentials import CredentialsUnavailable, SiteCredentials, generate_password
from provisioning.sites.drivers import SiteDriver

log = logging.getLogger(__name__)

DEFAULT_RETENTION = Retention(keep_last=7, max_age=timedelta(days=30))


@dataclass
class Run:
    """One claimed job as the runner's thread goes through it (no other thread touches it)."""

    service: PatientService
    job: ClaimedJob
    workflow: Workflow
    context: JobContext
    stop: WorkerStop  # whether a SIGTERM came, and how to say so
    first: int  # the position this attempt begins at (a retry's ``resume_from``)
    started_by_claim: int | None  # the position whose start the claim wrote (None: it skipped the first)
    at: int  # the position the runner is at: in that step, or about to start it
    completed: list[str]  # the steps done, by an earlier attempt or by this one
    reached: list[str]  # the steps started, the one in progress included
    # Step ends not on record yet. Each goes with the next write (the next step's start, or the
    # job's end): one transaction per step boundary. A worker that dies in between leaves the
    # step on record as running; it is reaped there, and a retry runs it again (steps are
    # idempotent). A write that raised leaves them here, for the failure that follows to write.
    ended: list[StepRecord] = field(default_factory=list)


@dataclass(eq=False)
class JobRunner:
    """Claims a job, runs its workflow's steps in order, and settles it.

    Each step's start is written before the step runs, with the ends of the steps before it
    (``_write_steps``), so the job's row shows the step in progress; the status that write reads
    is the check before every step: a cancel stops the job there, and a job that is no longer
    running (the sweeper failed it) is left alone. Inside long steps the driver asks the
    StopFlags the heartbeat keeps. A retry that resumes starts at its ``resume_from`` step, after
    the driver cleaned up what the failed attempt at that step left half-done.
    """

    sessions: sessionmaker[Session]
    driver: SiteDriver
    worker: str
    heartbeat_seconds: float = 10.0
    database_patience: float = 60.0
    cancel_grace: float = 30.0
    credentials: SiteCredentials = field(default_factory=lambda: SiteCredentials(None))
    backup_root: Path = Path("var/backups")
    retention: Retention = DEFAULT_RETENTION
    offsite: OffsiteStore | None = None  # None: backups are kept on this server only
    # In a worker's pool process: SIGTERM fails the running job at its step (see WorkerStop).
    fails_its_job_on_sigterm: bool = False
    # The server whose worker this is, and how it sends a job to another server's worker: a runner
    # with one routes each job first (``JobRouting``); one without runs the job it is given.
    server_name: str = DEFAULT_SERVER_NAME
    dispatch: Dispatch | None = None

    def __post_init__(self):
        backup_steps = BackupSteps(self.sessions, self.retention, self.offsite, self.backup_root)
        self.platform_steps = PlatformSteps(self.sessions, backup_steps)

    @classmethod
    def for_settings(
        cls,
        settings: Settings,
        sessions: sessionmaker[Session],
        driver: SiteDriver,
        worker: str,
        fails_its_job_on_sigterm: bool = False,
        dispatch: Dispatch | None = None,
    ) -> "JobRunner":
        return cls(
            sessions,
            driver,
            worker=worker,
            heartbeat_seconds=settings.job_heartbeat_seconds,
            database_patience=settings.lost_job_after_seconds,
            cancel_grace=settings.cancel_grace_seconds,
            credentials=SiteCredentials(settings.site_credentials_key),
            backup_root=settings.backup_path,
            retention=retention_of(settings),
            offsite=OffsiteStore.from_settings(settings),
            fails_its_job_on_sigterm=fails_its_job_on_sigterm,
            server_name=settings.server_name,
            dispatch=dispatch,
        )

    def run(self, job_id: uuid.UUID) -> None:
        """Run the job if it is still pending, or go on with it if another server's worker handed
        it to this one's; a duplicate or late message does nothing.

        The job's writes are transactions on one connection, kept for the whole job: taking one
        from the pool and giving it back for each cost more than a quick step's write.
        """
        with (
            WorkerStop(self.worker, self.fails_its_job_on_sigterm, StopFlags()) as stop,
            self.sessions.kw["bind"].connect() as connection,
            self.sessions(bind=connection) as session,
        ):
            if self.dispatch is not None and not JobRouting(session, self.server_name, self.dispatch).runs_here(job_id):
                return
            service = JobExecution(session, dispatch=self.dispatch)
            patient = PatientService(service, self.database_patience)
            try:
                claim = patient.start_job(job_id, self.worker, self._new_admin_password)
            except Conflict as refusal:
                log.warning("job %s: %s", job_id, refusal)
                return
            if claim is None:
                claim = patient.take_over(job_id, self.worker, self.server_name)
            if claim is None:
                log.info("job %s: not pending any more; message ignored as a duplicate", job_id)
                return
            job = claim.job
            request_id = logs.current("request_id") or job.request_id
            with logs.bound(request_id=request_id, job_id=job.id, tenant_id=job.tenant_id, job_type=job.job_type.value):
                self._run_claimed(service, claim, stop)

    def _new_admin_password(self) -> str | None:
        """A site's new admin password, encrypted; None without a key (the job's first step then
        fails, saying so)."""
        try:
            return self.credentials.encrypt(generate_password())
        except CredentialsUnavailable:
            return None

    def _run_claimed(self, service: JobExecution, claim: Claim, stop: WorkerStop) -> None:
        job, tenant_slug = claim.job, claim.tenant_slug
        log.info("job %s: %s started for tenant %s on %s", job.id, job.job_type.value, tenant_slug, self.worker)
        workflow = workflow_for(job.job_type)
        first = claim.continues_at
        if first is None:
            first = workflow.position_of(job.resume_from) if job.resume_from else 0
        done_before = list(workflow.step_names[:first])
        reached = list(done_before)
        run = Run(
            PatientService(service, self.database_patience), job, workflow,
            JobContext(self.sessions, claim, stop.flags, self.credentials, self.backup_root, reached, self.offsite), stop,
            first=first, started_by_claim=claim.step_started, at=first, completed=done_before, reached=reached,
        )  # fmt: skip
        with Heartbeat(self.sessions, job.id, self.worker, self.heartbeat_seconds, self.cancel_grace, stop.flags):
            try:
                self._run_steps(run)
            except Exception as error:
                # Outside a step (a time limit during a write, patience run out): say so now,
                # rather than leave the job running until it is reaped as lost.
                log.exception("job %s: stopped outside a step", job.id)
                self._fail_outside_a_step(run, service, f"stopped outside a step: {type(error).__name__}: {error}")
                raise

    def _run_steps(self, run: Run) -> None:
        job, workflow = run.job, run.workflow
        for position, step in enumerate(workflow.steps[run.first :], start=run.first):
            run.at = position
            if reason := workflow.skips(step, run.context.options):  # the context's: a failed claim changes them
                message = f"Skipped: {reason}"
                run.ended.append(StepRecord(position, step.name, StepStatus.SKIPPED, finished_at=utcnow(), message=message))
                continue
            if run.stop.requested:
                return self._fail(run, position, run.stop.reason(f"before step {step.name}"))
            if (server := server_of(step, job.options)) not in (None, self.server_name):
                return self._hand_over(run, step, server)
            if position != run.started_by_claim:
                status = self._write_steps(run, StepRecord.started(position, step))
                if status != JobStatus.RUNNING:
                    return self._stop(run, status)
            run.reached.append(step.name)
            log.info("job %s: step %s started", job.id, step.name, extra={"step": step.name})
            # The point of no return, once started, runs to its end whatever a cancel says.
            context = run.context.past_cancels() if step.name == workflow.point_of_no_return else run.context
            try:
                with logs.bound(step=step.name):
                    output = self._perform(job, step, context, first=position == run.first)
            except (StepStopped, StepTerminated) as stopped:
                return self._stopped_in_step(run, position, stopped)
            except StepFailed as failure:
                if isinstance(failure, BackupUnrestorable):
                    self.platform_steps.disprove(job, str(failure))
                error = f"step {step.name} failed: {failure}"
                if isinstance(failure, SiteUnchanged):
                    return self._fail(run, position, error, failure.output, tenant_status=job.tenant_status_before)
                return self._fail_in_step(run, position, error, failure.output)
            except SoftTimeLimitExceeded:  # no time left to undo anything: a retry resumes
                return self._fail(run, position, f"step {step.name} exceeded the task's soft time limit")
            except Exception as error:  # a driver bug must still end the job, never leave it running
                log.exception("job %s: step %s raised", job.id, step.name)
                return self._fail_in_step(run, position, f"step {step.name} failed: {type(error).__name__}: {error}")
            progress = workflow.progress_after(position + 1)
            run.ended.append(
                StepRecord(position, step.name, StepStatus.COMPLETED, finished_at=utcnow(), output=output, progress=progress)
            )
            run.completed.append(step.name)
        completed = run.service.complete_job(job.id, self.worker, workflow.tenant_on_success, run.ended)
        run.ended = []
        if completed:
            log.info("job %s: completed", job.id)
        else:
            # A cancel arrived during the last step (it wins, as at any other step boundary; the
            # ends are on record all the same), or the job is no longer this worker's.
            self._stop(run, self._write_steps(run))

    def _hand_over(self, run: Run, step: Step, server: str) -> None:
        """Give the job to the worker of ``server``, whose step is next: the steps done are written,
        the job is released and sent to that server's queue. A cancel that came first is settled here."""
        status = self._write_steps(run)
        if status == JobStatus.RUNNING and run.service.hand_over(run.job.id, self.worker, server, step.name):
            log.info("job %s: handed over to server %s for step %s", run.job.id, server, step.name)
            # Unsent (the broker down, no dispatch), the sweeper sends it (``JobRepairs.republish_pending``).
            run.service.send_handed_over(run.job.id, server)
            return
        self._stop(run, status if status != JobStatus.RUNNING else self._write_steps(run))

    def _write_steps(self, run: Run, starting: StepRecord | None = None) -> JobStatus | None:
        """Write the step ends waiting in ``run.ended`` and, with ``starting``, the next step's
        start, in one transaction; returns the job's status as that write read it (``running``:
        the step may run; ``cancelling``: the ends are written, the start is not; None: the job is
        no longer this worker's, and nothing was written). With neither, it only reads the status."""
        status = run.service.write_steps(run.job.id, self.worker, run.ended, starting)
        run.ended = []  # written, or never to be (the job is not ours); kept only if the write raised
        return status

    def _perform(self, job: ClaimedJob, step: Step, context: JobContext, first: bool) -> str:
        """Run one step. The job's first step first checks the settings the job needs, whichever
        driver runs it (a missing SITE_CREDENTIALS_KEY fails it naming the setting, before the
        tenant changes); a resumed job's first step takes over what the failed job left."""
        if first and workflow_for(job.job_type).needs_admin_password:
            context.admin_password()  # raises StepFailed, saying what to set
        cleaned = ""
        if first and job.resume_from is not None:
            with self.sessions() as session:
                BackupBook(session).take_over(job.retry_of_id, job.id)
            if not step.by_platform:
                cleaned = self.driver.clean_up(step.name, context) + "\n"
        if step.by_platform:
            return cleaned + self.platform_steps.run(step.name, job)
        return cleaned + self.driver.run_step(step.name, context)

    def _stopped_in_step(self, run: Run, position: int, stopped: StepStopped | StepTerminated) -> None:
        """A step stopped because the flags said so: the worker is stopping (the job fails at the
        step), the job is being cancelled (the step is recorded cancelled, saying how, and the
        cancel settled), or the job is no longer this worker's (nothing is written)."""
        step = run.workflow.steps[position]
        if run.stop.requested:
            return self._fail(run, position, run.stop.reason(f"during step {step.name}"))
        status = self._write_steps(run)
        if status == JobStatus.RUNNING:
            return self._fail(run, position, f"step {step.name} stopped although nothing asked it to: {stopped}")
        if status == JobStatus.CANCELLING:
            how = f"Terminated: it {stopped}" if isinstance(stopped, StepTerminated) else "Stopped by a cancel request"
            run.service.end_step(run.job.id, self.worker, position, StepStatus.CANCELLED, how)
        self._stop(run, status)

    def _stop(self, run: Run, status: JobStatus | None) -> None:
        """Settle a cancel, or step aside when the job is no longer this worker's."""
        if status == JobStatus.CANCELLING:
            self._settle_cancel(run)
        else:
            log.warning("job %s: is %s now, no longer this worker's to run; stopping without writing", run.job.id, status)

    def _fail_in_step(self, run: Run, position: int, error: str, output: str = "") -> None:
        """Fail the job at a driver's step that failed; a job that ``undoes_failures`` first has the
        driver undo what it changed (a restore puts the site back from its safety backup), and the
        tenant goes where a success would have put it, the site being whole; if that fails too,
        the error says so and the tenant goes where a failure puts it. A platform step's failure
        (recording a proof, say) undoes nothing: the site is as the job meant it to be."""
        workflow, step = run.workflow, run.workflow.steps[position]
        if step.by_platform or not (workflow.undoes_failures and workflow.changed_the_site(run.reached)):
            return self._fail(run, position, error, output)
        try:
            undone = self.driver.undo(run.context.unstoppable())
        except Exception as undo_error:
            log.exception("job %s: undoing the failed step failed", run.job.id)
            return self._fail(run, position, f"{error}; undoing it failed too: {undo_error}", output)
        output = f"{output}\n{undone}".strip()
        whole = workflow.tenant_on_success
        self._fail(run, position, f"{error}; {workflow.undoes_failures}", output, tenant_status=whole)

    def _fail(
        self,
        run: Run,
        position: int,
        error: str,
        output: str = "",
        service: JobExecution | PatientService | None = None,
        tenant_status: TenantStatus | None = None,
    ) -> None:
        """Fail the job at the step at ``position`` (in it, or about to start it): the step is
        failed with ``error``, so a retry resumes there, and the tenant released as for any
        failure there, in the one transaction that fails the job with the step ends not yet on
        record (or put in ``tenant_status``, when the failure was undone). A step that had
        completed (the job failed after its last step, completing it) stays completed: it is not
        run again."""
        job, workflow, step = run.job, run.workflow, run.workflow.steps[position]
        log.warning("job %s: %s", job.id, error, extra={"step": step.name})
        failed = [] if step.name in run.completed else [
            StepRecord(position, step.name, StepStatus.FAILED, finished_at=utcnow(), output=output, message=error)
        ]  # fmt: skip
        tenant_status = tenant_status or workflow.tenant_after_failure(step.name, job.tenant_status_before)
        recorded = (service or run.service).fail_job(job.id, self.worker, error, tenant_status, [*run.ended, *failed])
        run.ended = []
        if not recorded:
            log.warning("job %s: no longer this worker's, so its failure was not recorded", job.id)

    def _fail_outside_a_step(self, run: Run, service: JobExecution, error: str) -> None:
        """Fail the job at the step the runner was at (without waiting out an outage again)."""
        try:
            service.uow.rollback()
            self._fail(run, run.at, error, service=PatientService(service, patience=0))
        except Exception:
            log.exception("job %s: could not record the failure; the sweeper will fail it as lost", run.job.id)

    def _settle_cancel(self, run: Run) -> None:
        """End a cancelled job, undoing what it made unless it already passed its point of no return.

        Undoing has the driver undo what the job changed of the site (remove what a create made, put
        back a restored site from its safety backup), then discards the backups the job took,
        recorded or not (a cancelled job leaves none behind). A job stopped before
        ``changes_from`` changed nothing there, so the driver undoes nothing: what is there (a
        failed tenant's site, say) is not this job's to remove.
        """
        service, job, workflow = run.service, run.job, run.workflow
        if (past := workflow.point_of_no_return) in run.completed:
            with self.sessions() as session:
                kept = BackupBook(session).kept_of_job(job.id)
            stands = [workflow.cannot_undo] if workflow.cannot_undo else []
            stands += ["the backup it took is kept"] if kept else []
            message = f"Cancelled after {past} had completed; that cannot be undone: {'; '.join(stands)}"
        else:
            try:
                if not workflow.changed_the_site(run.reached):
                    message = "Cancelled before it changed anything"
                else:
                    # The clean-up must run to its end although the job is cancelling; it may use the
                    # backup the job took (a restore's safety backup), so that is discarded after it.
                    self.driver.undo(run.context.unstoppable())
                    message = "Cancelled; its partial work was undone"
                with self.sessions() as session:
                    BackupBook(session).discard_of_job(job.id, f"discarded: job {job.id} was cancelled")
                run.context.remove_backup_directory()  # what a backup step wrote before it was recorded
            except Exception as error:
                log.exception("job %s: clean-up after cancel failed", job.id)
                error_text = f"cancelled, but cleaning up failed: {type(error).__name__}: {error}"
                tenant_status = workflow.tenant_after_failure(None, job.tenant_status_before)
                service.fail_job(job.id, self.worker, error_text, tenant_status)  # the step ends are written
                return
        service.finish_cancel(job.id, workflow.tenant_after_cancel(run.completed, job.tenant_status_before), message)
        log.info("job %s: cancelled", job.id)
