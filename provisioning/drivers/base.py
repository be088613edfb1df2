"""The interface between a job's steps and whatever performs them."""

from typing import Protocol

from provisioning.enums import JobType


class StepContext(Protocol):
    def cancel_requested(self) -> bool:
        """True once the job's cancel was requested; long steps ask it now and then."""


class SiteDriver(Protocol):
    def run_step(self, job_type: JobType, step: str, tenant_slug: str, context: StepContext) -> str:
        """Perform one named step for the tenant's site and return its output.

        Raises:
            StepFailed: the step failed; its message becomes the job's error.
            StepCancelled: the step stopped early because of a cancel.
        """

    def undo(self, job_type: JobType, tenant_slug: str) -> str:
        """Remove what a cancelled job of this type left half-done, and return the output."""
