"""JobRunner: runs one claimed job step by step through a site driver, as a worker does."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

from provisioning.backups.book import BackupBook, BackupSteps, Retention, retention_of
from provisioning.enums import JobStatus, StepStatus
from provisioning.errors import Conflict, StepFailed, StepStopped, StepTerminated, WorkerStopping
from provisioning.jobs.context import JobContext
from provisioning.jobs.heartbeat import Heartbeat
from provisioning.jobs.patience import PatientService
from provisioning.jobs.records import Claim, ClaimedJob, StepRecord
from provisioning.jobs.service import ProvisioningService
from provisioning.jobs.step_interruptions import StepTerminator, WorkerStop
from provisioning.jobs.step_journal import StepJournal
from provisioning.jobs.workflows import Step, Workflow, workflow_for
from provisioning.platform import logs
from provisioning.platform.db import utcnow
from provisioning.platform.settings import Settings
from provisioning.sites.credentials import CredentialsUnavailable, SiteCredentials, generate_password
from provisioning.sites.drivers import SiteDriver

log = logging.getLogger(__name__)

DEFAULT_RETENTION = Retention(keep_last=7, max_age=timedelta(days=30))


class JobWatch:
    """The job's status as the database has it, read at most once per interval.

    Drivers ask whether to stop often inside long steps; the interval keeps that from becoming a
    query storm, and a status read with a step write counts as a read (``saw``). A job stops
    when it is being cancelled, and also when it is no longer running at all: then the sweeper
    declared this worker lost and failed the job, and whatever this worker would still write is
    no longer its to write.
    """

    def __init__(self, service: ProvisioningService | PatientService, job_id: uuid.UUID, interval: float = 0.5):
        self.service = service
        self.job_id = job_id
        self.interval = interval
        # Made right after the claim, which read the job as running.
        self.saw(JobStatus.RUNNING)

    def status(self, fresh: bool = False) -> JobStatus | None:
        if fresh or (self._status == JobStatus.RUNNING and time.monotonic() - self._read_at >= self.interval):
            self.saw(self.service.get_job_status(self.job_id))
        return self._status

    def saw(self, status: JobStatus | None) -> None:
        """Take a status read elsewhere (with a step write) as this interval's."""
        self._read_at = time.monotonic()
        self._status = status

    def should_stop(self) -> bool:
        """The check a driver makes inside its step."""
        return self.status() != JobStatus.RUNNING

    def taken_away(self) -> bool:
        """The check inside a step that a cancel must not stop (the point of no return): only a
        job that is no longer this worker's stops it."""
        return self.status() not in (JobStatus.RUNNING, JobStatus.CANCELLING)


@dataclass
class Run:
    """One job as its runner goes through it: which steps it completed, which it started (the
    one in progress included), and the position of the step it is at (``at``)."""

    service: PatientService
    job: ClaimedJob
    workflow: Workflow
    journal: StepJournal
    watch: JobWatch
    context: JobContext
    completed: list[str]
    reached: list[str]
    at: int


class JobRunner:
    """Claims a job, runs its workflow's steps in order, and settles it.

    Each step boundary is one short transaction, written before the next step runs (see
    StepJournal), so the job's row shows the step in progress. Its status read is the check
    before every step: a cancel stops the job there, and a job that is no longer running (the
    sweeper failed it) is left alone. Inside long steps the driver asks the same question. A
    retry that resumes starts at its ``resume_from`` step, after the driver cleaned up what the
    failed attempt at that step left half-done.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        driver: SiteDriver,
        worker: str,
        heartbeat_seconds: float = 10.0,
        database_patience: float = 60.0,
        cancel_grace: float = 30.0,
        credentials: SiteCredentials | None = None,
        backup_root: Path = Path("var/backups"),
        retention: Retention = DEFAULT_RETENTION,
        fails_its_job_on_sigterm: bool = False,
    ):
        self.sessions = sessions
        self.driver = driver
        self.worker = worker
        self.heartbeat_seconds = heartbeat_seconds
        self.database_patience = database_patience
        self.cancel_grace = cancel_grace
        self.credentials = credentials or SiteCredentials(None)
        self.backup_root = backup_root
        self.backup_steps = BackupSteps(sessions, retention)
        # In a worker's pool process: SIGTERM fails the running job at its step (see WorkerStop).
        self.fails_its_job_on_sigterm = fails_its_job_on_sigterm

    @classmethod
    def for_settings(
        cls,
        settings: Settings,
        sessions: sessionmaker[Session],
        driver: SiteDriver,
        worker: str,
        fails_its_job_on_sigterm: bool = False,
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
            fails_its_job_on_sigterm=fails_its_job_on_sigterm,
        )

    def run(self, job_id: uuid.UUID) -> None:
        """Run the job if it is still pending; a duplicate or late message does nothing.

        The job's writes are transactions on one connection, kept for the whole job: taking one
        from the pool and giving it back for each cost more than a quick step's write.
        """
        with (
            WorkerStop(self.worker, self.fails_its_job_on_sigterm) as stop,
            self.sessions.kw["bind"].connect() as connection,
            self.sessions(bind=connection) as session,
        ):
            service = ProvisioningService(session)
            try:
                claim = PatientService(service, self.database_patience).start_job(job_id, self.worker, self._new_admin_password)
            except Conflict as refusal:
                log.warning("job %s: %s", job_id, refusal)
                return
            if claim is None:
                log.info("job %s: not pending any more; message ignored as a duplicate", job_id)
                return
            job = claim.job
            job_fields = logs.bound(
                request_id=logs.current("request_id") or job.request_id,
                job_id=job.id,
                tenant_id=job.tenant_id,
                job_type=job.job_type.value,
            )
            with job_fields:
                self._run_claimed(service, claim, stop)

    def _new_admin_password(self) -> str | None:
        """A site's new admin password, encrypted; None without a key (the job's first step then
        fails, saying so)."""
        try:
            return self.credentials.encrypt(generate_password())
        except CredentialsUnavailable:
            return None

    def _run_claimed(self, service: ProvisioningService, claim: Claim, stop: WorkerStop) -> None:
        job, tenant_slug = claim.job, claim.tenant_slug
        log.info("job %s: %s started for tenant %s on %s", job.id, job.job_type.value, tenant_slug, self.worker)
        terminator = StepTerminator(job.id)
        patient = PatientService(service, self.database_patience)
        workflow = workflow_for(job.job_type)
        watch = JobWatch(patient, job.id)
        journal = StepJournal(patient, watch, job.id, self.worker, workflow, claim.step_started)
        context = JobContext(self.sessions, claim, watch.should_stop, self.credentials, self.backup_root)
        first = workflow.position_of(job.resume_from) if job.resume_from else 0
        done_before = list(workflow.step_names[:first])
        run = Run(patient, job, workflow, journal, watch, context, completed=done_before, reached=list(done_before), at=first)
        heartbeat = Heartbeat(self.sessions, job.id, self.worker, self.heartbeat_seconds, self.cancel_grace, terminator)
        with heartbeat:
            try:
                self._run_steps(run, terminator, stop)
            except Exception as error:
                # Outside a step (a time limit during a write, patience run out): say so now,
                # rather than leave the job running until it is reaped as lost.
                log.exception("job %s: stopped outside a step", job.id)
                self._fail_outside_a_step(run, service, f"stopped outside a step: {type(error).__name__}: {error}")
                raise

    def _run_steps(self, run: Run, terminator: StepTerminator, stop: WorkerStop) -> None:
        service, job, workflow, journal = run.service, run.job, run.workflow, run.journal
        first = run.at
        for position, step in enumerate(workflow.steps[first:], start=first):
            run.at = position
            if workflow.skips(step, job.options):
                journal.skip(position, f"Skipped: the job asked for {step.skipped_when}")
                continue
            if stop.requested:
                return self._fail(run, position, stop.reason(f"before step {step.name}"))
            if journal.begin(position, step) != JobStatus.RUNNING:
                return self._stop(run)
            run.reached.append(step.name)
            log.info("job %s: step %s started", job.id, step.name, extra={"step": step.name})
            # The point of no return, once started, runs to its end whatever a cancel says.
            stops_for_a_cancel = step.name != workflow.point_of_no_return
            step_context = run.context if stops_for_a_cancel else run.context.stopping_when(run.watch.taken_away)
            try:
                with terminator.step(stops_for_a_cancel), stop.step(), logs.bound(step=step.name):
                    output = self._perform(job, step, step_context, first=position == first)
            except WorkerStopping:
                service.session.rollback()  # the signal may have landed in the middle of a query
                return self._fail(run, position, stop.reason(f"during step {step.name}"))
            except (StepStopped, StepTerminated) as stopped:
                service.session.rollback()  # a signal may have landed in the middle of a query
                if journal.flush() == JobStatus.CANCELLING:
                    how = f"Terminated: it {stopped}" if isinstance(stopped, StepTerminated) else "Stopped by a cancel request"
                    service.end_step(job.id, self.worker, position, StepStatus.CANCELLED, how)
                return self._stop(run)
            except StepFailed as failure:
                return self._fail(run, position, f"step {step.name} failed: {failure}", failure.output)
            except SoftTimeLimitExceeded:
                return self._fail(run, position, f"step {step.name} exceeded the task's soft time limit")
            except Exception as error:  # a driver bug must still end the job, never leave it running
                log.exception("job %s: step %s raised", job.id, step.name)
                return self._fail(run, position, f"step {step.name} failed: {type(error).__name__}: {error}")
            journal.complete(position, output)
            run.completed.append(step.name)
        with journal.written_by_caller() as done:
            completed = service.complete_job(job.id, self.worker, done)
        if completed:
            log.info("job %s: completed", job.id)
        else:
            # A cancel arrived during the last step (it wins, as at any other step boundary), or
            # the job is no longer this worker's.
            self._stop(run)

    def _perform(self, job: ClaimedJob, step: Step, context: JobContext, first: bool) -> str:
        """Run one step. The job's first step first checks the settings the job needs, and a
        resumed job's first step takes over what the failed job left."""
        if first:
            self._check_settings(job, context)
        cleaned = ""
        if first and job.resume_from is not None:
            with self.sessions() as session:
                BackupBook(session).take_over(job.retry_of_id, job.id)
            if not step.by_platform:
                cleaned = self.driver.clean_up(step.name, context) + "\n"
        if step.by_platform:
            return cleaned + self.backup_steps.run(step.name, job.id, job.tenant_id)
        return cleaned + self.driver.run_step(step.name, context)

    def _check_settings(self, job: ClaimedJob, context: JobContext) -> None:
        """What the job will need of the settings, whichever driver runs it, checked before it
        changes anything: a missing setting fails its first step, naming the setting, and leaves
        the tenant as it was (not failed at a later step). The drivers check their own settings
        in every step.

        Raises:
            StepFailed: for a job that makes the site, SITE_CREDENTIALS_KEY is not set, or the
                admin password the claim stored does not open with it.
        """
        if workflow_for(job.job_type).needs_admin_password:
            context.admin_password()

    def _stop(self, run: "Run") -> None:
        """Settle a cancel, or step aside when the job is no longer this worker's."""
        status = run.journal.flush()  # the steps done so far go on record, and the status is fresh
        if status == JobStatus.CANCELLING:
            self._settle_cancel(run)
        else:
            log.warning("job %s: is %s now, no longer this worker's to run; stopping without writing", run.job.id, status)

    def _fail(
        self, run: "Run", position: int, error: str, output: str = "", service: ProvisioningService | PatientService | None = None
    ) -> None:
        """Fail the job at the step at ``position`` (in it, or about to start it): the step is
        failed with ``error``, so a retry resumes there, and the tenant released as for any
        failure there, in the one transaction that fails the job. A step that had completed (the
        job failed after its last step, completing it) stays completed: it is not run again."""
        job, workflow, step = run.job, run.workflow, run.workflow.steps[position]
        log.warning("job %s: %s", job.id, error, extra={"step": step.name})
        failed = [] if step.name in run.completed else [
            StepRecord(position, step.name, StepStatus.FAILED, finished_at=utcnow(), output=output, message=error)
        ]  # fmt: skip
        tenant_status = workflow.tenant_after_failure(step.name, job.tenant_status_before)
        with run.journal.written_by_caller() as done:
            recorded = (service or run.service).fail_job(job.id, self.worker, error, tenant_status, [*done, *failed])
        if not recorded:
            log.warning("job %s: no longer this worker's, so its failure was not recorded", job.id)

    def _fail_outside_a_step(self, run: "Run", service: ProvisioningService, error: str) -> None:
        """Fail the job at the step the runner was at (without waiting out an outage again)."""
        try:
            service.session.rollback()
            self._fail(run, run.at, error, service=PatientService(service, patience=0))
        except Exception:
            log.exception("job %s: could not record the failure; the sweeper will fail it as lost", run.job.id)

    def _settle_cancel(self, run: "Run") -> None:
        """End a cancelled job, undoing what it made unless it already passed its point of no return.

        Undoing discards the backups the job took, recorded or not (a cancelled job leaves none
        behind), and has the driver remove what the job made of the site. A job stopped before ``changes_from``
        made nothing there, so the driver undoes nothing: what is there (a failed tenant's site,
        say) is not this job's to remove.
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
                with self.sessions() as session:
                    BackupBook(session).discard_of_job(job.id, f"discarded: job {job.id} was cancelled")
                run.context.remove_backup_directory()  # what a backup step wrote before it was recorded
                if workflow.changes_from is not None and workflow.changes_from not in run.reached:
                    message = "Cancelled before it changed anything"
                else:
                    # The clean-up must run to its end although the job is cancelling.
                    self.driver.undo(run.context.unstoppable())
                    message = "Cancelled; its partial work was undone"
            except Exception as error:
                log.exception("job %s: clean-up after cancel failed", job.id)
                error_text = f"cancelled, but cleaning up failed: {type(error).__name__}: {error}"
                tenant_status = workflow.tenant_after_failure(None, job.tenant_status_before)
                with run.journal.written_by_caller() as done:
                    service.fail_job(job.id, self.worker, error_text, tenant_status, done)
                return
        service.finish_cancel(job.id, workflow.tenant_after_cancel(run.completed, job.tenant_status_before), message)
        log.info("job %s: cancelled", job.id)
