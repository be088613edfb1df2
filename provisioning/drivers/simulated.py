"""A driver that only takes time, so the platform can be used and tested with no ERPNext at hand."""

import time

from provisioning.drivers.base import StepContext
from provisioning.enums import JobType
from provisioning.errors import StepFailed, StepStopped

CANCEL_POLL_SECONDS = 0.05


class SimulatedDriver:
    """Each step lasts ``step_seconds``; the step named ``fail_step`` fails, to show failures on
    demand; with ``ignore_cancel`` steps never ask whether to stop, as a hung command would not."""

    def __init__(self, step_seconds: float, fail_step: str | None = None, ignore_cancel: bool = False):
        self.step_seconds = step_seconds
        self.fail_step = fail_step
        self.ignore_cancel = ignore_cancel

    def run_step(self, job_type: JobType, step: str, tenant_slug: str, context: StepContext) -> str:
        deadline = time.monotonic() + self.step_seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if not self.ignore_cancel and context.should_stop():
                raise StepStopped(step)
            time.sleep(min(remaining, CANCEL_POLL_SECONDS))
        if step == self.fail_step:
            raise StepFailed(f"simulated failure of step {step} (SIMULATED_FAIL_STEP)", output=f"{step}: failing on request")
        return f"{step}: simulated for {tenant_slug} in {self.step_seconds:g}s"

    def undo(self, job_type: JobType, tenant_slug: str) -> str:
        return f"{job_type.value}: simulated clean-up for {tenant_slug}"
