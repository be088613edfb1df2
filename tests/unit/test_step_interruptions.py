"""What stops a step from outside it, as the flags its thread reads: what a cancel's grace period may
stop and what it may not; where a SIGTERM fails the running job, and where it stays the worker's own."""

import signal

from provisioning.jobs.step_interruptions import GRACE_OVER, TAKEN_AWAY, WORKER_STOPPING, StopFlags, WorkerStop


def test_a_cancel_asks_a_step_to_stop_and_its_grace_period_over_makes_it_stop():
    flags = StopFlags()
    assert not flags.should_stop() and flags.must_stop() is None
    flags.cancelled.set()
    assert flags.should_stop() and flags.must_stop() is None
    flags.grace_over.set()
    assert flags.must_stop() == GRACE_OVER


def test_neither_a_cancel_nor_its_grace_period_stops_the_point_of_no_return_but_losing_the_job_does():
    flags = StopFlags()
    flags.cancelled.set()
    flags.grace_over.set()
    assert not flags.should_stop(stops_for_a_cancel=False) and flags.must_stop(stops_for_a_cancel=False) is None
    flags.taken_away.set()
    assert flags.should_stop(stops_for_a_cancel=False) and flags.must_stop(stops_for_a_cancel=False) == TAKEN_AWAY


def test_in_a_pool_process_a_sigterm_makes_the_step_stop_and_asks_for_the_job_to_fail():
    with WorkerStop("w@test pid 1", enabled=True, flags=StopFlags()) as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested
        assert stop.flags.must_stop(stops_for_a_cancel=False) == WORKER_STOPPING, "even the point of no return"
        assert stop.reason("during step create_site") == (
            "worker w@test pid 1 was stopped during step create_site: its process received SIGTERM"
        )
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler it replaced is back"


def test_where_a_job_runs_in_the_worker_s_own_process_sigterm_stays_the_worker_s_warm_shutdown():
    """Under ``-P solo`` the task runs in Celery's main process: its SIGTERM handler must stay."""

    def celerys_own(_signum, _frame):
        raise AssertionError("not to be called here")

    previous = signal.signal(signal.SIGTERM, celerys_own)
    try:
        with WorkerStop("w@test pid 1", enabled=False, flags=StopFlags()):
            assert signal.getsignal(signal.SIGTERM) is celerys_own
    finally:
        signal.signal(signal.SIGTERM, previous)
