"""Interrupting a step from the heartbeat's thread: what a cancel's grace period may stop, and what it may not."""

import uuid

import pytest

from provisioning.errors import StepTerminated
from provisioning.runner import StepTerminator

GRACE_OVER = "did not stop within the cancel's grace period"
TAKEN_AWAY = "was stopped: the job is no longer this worker's"


def test_a_cancel_s_grace_period_interrupts_an_ordinary_step():
    terminator = StepTerminator(uuid.uuid4())
    with pytest.raises(StepTerminated, match="grace period"), terminator.step():
        terminator.terminate(GRACE_OVER, for_a_cancel=True)


def test_a_cancel_s_grace_period_never_interrupts_the_point_of_no_return_but_losing_the_job_does():
    terminator = StepTerminator(uuid.uuid4())
    with terminator.step(stops_for_a_cancel=False):
        terminator.terminate(GRACE_OVER, for_a_cancel=True)  # the step runs on
        with pytest.raises(StepTerminated, match="no longer this worker's"):
            terminator.terminate(TAKEN_AWAY)


def test_a_signal_between_steps_interrupts_nothing():
    terminator = StepTerminator(uuid.uuid4())
    terminator.terminate(TAKEN_AWAY)
    with terminator.step():
        pass
