"""Interrupting a step from outside it: what a cancel's grace period may stop, and what it may not;
where a SIGTERM fails the running job, and where it stays the worker's own."""

import signal
import uuid

import pytest

from provisioning.errors import StepTerminated, WorkerStopping
from provisioning.jobs.step_interruptions import StepTerminator, WorkerStop

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


def test_in_a_pool_process_a_sigterm_inside_a_step_stops_it_and_asks_for_the_job_to_fail():
    with WorkerStop("w@test pid 1", enabled=True) as stop:
        with pytest.raises(WorkerStopping), stop.step():
            signal.raise_signal(signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler it replaced is back"


def test_where_a_job_runs_in_the_worker_s_own_process_sigterm_stays_the_worker_s_warm_shutdown():
    """Under ``-P solo`` the task runs in Celery's main process: its SIGTERM handler must stay."""

    def celerys_own(_signum, _frame):
        raise AssertionError("not to be called here")

    previous = signal.signal(signal.SIGTERM, celerys_own)
    try:
        with WorkerStop("w@test pid 1", enabled=False):
            assert signal.getsignal(signal.SIGTERM) is celerys_own
    finally:
        signal.signal(signal.SIGTERM, previous)
