"""Site drivers do the real work of each step; settings choose which one runs."""

from provisioning.platform.settings import Settings
from provisioning.sites.drivers.base import SiteDriver, StepContext
from provisioning.sites.drivers.bench import BenchDriver
from provisioning.sites.drivers.simulated import SimulatedDriver


def make_driver(settings: Settings) -> SiteDriver:
    if settings.site_driver == "bench":
        return BenchDriver(settings.bench)
    return SimulatedDriver(
        step_seconds=settings.simulated_step_seconds,
        fail_step=settings.simulated_fail_step,
        ignore_cancel=settings.simulated_ignore_cancel,
        apps=settings.bench.apps,
    )


__all__ = ["SiteDriver", "StepContext", "make_driver"]
