"""A small soak in every run: jobs keep their promises while workers are SIGKILLed and restarted.

The full size (500 jobs) runs by hand: ``.venv/bin/python -m tests.soak --jobs 500``.
"""

import pytest

from tests.soak import soak

pytestmark = pytest.mark.disruptive  # SIGKILLs workers every few seconds


def test_jobs_through_workers_killed_every_two_seconds_all_end_final_none_twice_none_lost():
    """Steps are counted per tenant and attempt (the job first asked, then its retry): within an
    attempt no step starts twice, and a step that an attempt recorded completed never starts again
    in the retry that resumes it. Only the step a worker was killed in, never completed, may run
    again there. Every completed step must show its start in the logs, or nothing was counted."""
    report = soak(jobs=60, kill_every=2.0)
    print("\n".join(report.lines()))  # shown by pytest when the test failed
    assert report.kills >= 1, "the soak must kill a worker at least once to prove anything"
    assert report.not_final == 0
    assert report.steps.unlogged == 0, "the workers' logs no longer show each step's start"
    assert report.steps.run_twice == 0
    assert report.steps.rerun_by_retry == 0
    assert report.completed_in_the_end == report.jobs
