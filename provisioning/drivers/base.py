"""The interface between a job's steps and whatever performs them."""

from typing import Protocol

from provisioning.enums import JobType


class StepContext(Protocol):
    def should_stop(self) -> bool:
        """True once the step should stop early (its job is being cancelled, or is no longer this
        worker's); long steps ask it now and then and raise StepStopped."""


class SiteDriver(Protocol):
    def run_step(self, job_type: JobType, step: str, tenant_slug: str, context: StepContext) -> str:
        """Perform one named step for the tenant's site and return its output.

        Raises:
            StepFailed: the step failed; its message becomes the job's error.
            StepStopped: the step stopped early because ``context.should_stop()`` said so.
        """

    def undo(self, job_type: JobType, tenant_slug: str) -> str:
        """Remove what a cancelled job of this type left half-done, and return the output."""
