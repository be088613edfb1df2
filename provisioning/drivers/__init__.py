"""Site drivers do the real work of each step; settings choose which one runs."""

from provisioning.drivers.base import SiteDriver, StepContext
from provisioning.drivers.bench import BenchDriver
from provisioning.drivers.simulated import SimulatedDriver
from provisioning.settings import Settings


def make_driver(settings: Settings) -> SiteDriver:
    if settings.site_driver == "bench":
        return BenchDriver(settings.bench)
    return SimulatedDriver(
        step_seconds=settings.simulated_step_seconds,
        fail_step=settings.simulated_fail_step,
        ignore_cancel=settings.simulated_ignore_cancel,
    )


__all__ = ["SiteDriver", "StepContext", "make_driver"]
