"""JobRunner: runs one claimed job step by step through a site driver, as a worker does."""

from __future__ import annotations

import logging
import time
import uuid

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

from provisioning.drivers import SiteDriver
from provisioning.enums import JobStatus, StepStatus
from provisioning.errors import Conflict, StepCancelled, StepFailed
from provisioning.models import ProvisioningJob
from provisioning.service import ProvisioningService
from provisioning.workflows import Workflow, workflow_for

log = logging.getLogger(__name__)


class CancelCheck:
    """Answers "was this job's cancel requested?", asking the database at most once per interval.

    Drivers call it often inside long steps; the interval keeps that from becoming a query storm.
    """

    def __init__(self, service: ProvisioningService, job_id: uuid.UUID, interval: float = 0.5):
        self.service = service
        self.job_id = job_id
        self.interval = interval
        self._checked_at = float("-inf")
        self._requested = False

    def cancel_requested(self) -> bool:
        if not self._requested and time.monotonic() - self._checked_at >= self.interval:
            self._checked_at = time.monotonic()
            self._requested = self.service.get_job_status(self.job_id) == JobStatus.CANCELLING
        return self._requested

    def check_now(self) -> bool:
        self._checked_at = float("-inf")
        return self.cancel_requested()


class JobRunner:
    """Claims a job, runs its workflow's steps in order, and settles it.

    Each transition is its own short transaction, so the job's row always shows the step in
    progress. The job is checked for a cancel before every step and, through the driver,
    inside long steps.
    """

    def __init__(self, sessions: sessionmaker[Session], driver: SiteDriver, worker: str):
        self.sessions = sessions
        self.driver = driver
        self.worker = worker

    def run(self, job_id: uuid.UUID) -> None:
        """Run the job if it is still pending; a duplicate or late message does nothing."""
        with self.sessions() as session:
            service = ProvisioningService(session)
            try:
                job = service.start_job(job_id, self.worker)
            except Conflict as refusal:
                log.warning("job %s: %s", job_id, refusal)
                return
            if job is None:
                log.info("job %s: not pending any more; message ignored as a duplicate", job_id)
                return
            log.info("job %s: %s started for tenant %s on %s", job_id, job.job_type.value, job.tenant.slug, self.worker)
            self._run_steps(service, job, workflow_for(job.job_type))

    def _run_steps(self, service: ProvisioningService, job: ProvisioningJob, workflow: Workflow) -> None:
        cancel_check = CancelCheck(service, job.id)
        completed: list[str] = []
        for position, step in enumerate(workflow.steps):
            if cancel_check.check_now():
                return self._settle_cancel(service, job, workflow, completed)
            service.start_step(job.id, position, step.message)
            try:
                output = self.driver.run_step(job.job_type, step.name, job.tenant.slug, cancel_check)
            except StepCancelled:
                service.end_step(job.id, position, StepStatus.CANCELLED, "Stopped by a cancel request")
                return self._settle_cancel(service, job, workflow, completed)
            except StepFailed as failure:
                return self._fail(service, job, position, f"step {step.name} failed: {failure}", failure.output)
            except SoftTimeLimitExceeded:
                return self._fail(service, job, position, f"step {step.name} exceeded the task's soft time limit")
            except Exception as error:  # a driver bug must still end the job, never leave it running
                log.exception("job %s: step %s raised", job.id, step.name)
                return self._fail(service, job, position, f"step {step.name} failed: {type(error).__name__}: {error}")
            service.finish_step(job.id, position, output, workflow.progress_after(position + 1))
            completed.append(step.name)
        if service.complete_job(job.id):
            log.info("job %s: completed", job.id)
        elif service.get_job_status(job.id) == JobStatus.CANCELLING:
            # A cancel arrived during the last step; it wins, as at any other step boundary.
            self._settle_cancel(service, job, workflow, completed)
        else:
            log.warning("job %s: ran every step but is no longer running; left as it is", job.id)

    def _fail(self, service: ProvisioningService, job: ProvisioningJob, position: int, error: str, output: str = "") -> None:
        log.warning("job %s: %s", job.id, error)
        workflow = workflow_for(job.job_type)
        service.end_step(job.id, position, StepStatus.FAILED, error, output)
        tenant_status = workflow.tenant_after_failure(workflow.steps[position].name, job.tenant_status_before)
        if not service.fail_job(job.id, error, tenant_status):
            log.warning("job %s: no longer running, so its failure was not recorded", job.id)

    def _settle_cancel(self, service: ProvisioningService, job: ProvisioningJob, workflow: Workflow, completed: list[str]) -> None:
        """End a cancelled job, undoing what it made unless it already passed its point of no return."""
        if workflow.point_of_no_return in completed:
            message = f"Cancelled after {workflow.point_of_no_return} had completed; that cannot be undone"
        else:
            try:
                self.driver.undo(job.job_type, job.tenant.slug)
            except Exception as error:
                log.exception("job %s: clean-up after cancel failed", job.id)
                error_text = f"cancelled, but cleaning up failed: {type(error).__name__}: {error}"
                service.fail_job(job.id, error_text, workflow.tenant_after_failure(None, job.tenant_status_before))
                return
            message = "Cancelled; its partial work was undone"
        service.finish_cancel(job.id, workflow.tenant_after_cancel(completed, job.tenant_status_before), message)
        log.info("job %s: cancelled", job.id)
