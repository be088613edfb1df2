"""The simulated site driver: timing, failure on demand, and stopping on cancel."""

import time

import pytest

from provisioning.drivers.simulated import SimulatedDriver
from provisioning.enums import JobType
from provisioning.errors import StepFailed, StepStopped


class Never:
    def should_stop(self) -> bool:
        return False


class AfterCalls:
    def __init__(self, calls: int):
        self.remaining = calls

    def should_stop(self) -> bool:
        self.remaining -= 1
        return self.remaining < 0


def test_a_zero_second_step_succeeds_at_once_and_says_what_it_did():
    output = SimulatedDriver(step_seconds=0).run_step(JobType.CREATE_SITE, "create_site", "acme", Never())
    assert "create_site" in output and "acme" in output


def test_the_step_named_to_fail_fails_with_a_message_naming_it():
    driver = SimulatedDriver(step_seconds=0, fail_step="install_apps")
    driver.run_step(JobType.CREATE_SITE, "create_site", "acme", Never())
    with pytest.raises(StepFailed, match="install_apps"):
        driver.run_step(JobType.CREATE_SITE, "install_apps", "acme", Never())


def test_a_long_step_stops_soon_after_it_is_asked_to():
    started = time.monotonic()
    with pytest.raises(StepStopped):
        SimulatedDriver(step_seconds=60).run_step(JobType.CREATE_SITE, "create_site", "acme", AfterCalls(3))
    assert time.monotonic() - started < 5
