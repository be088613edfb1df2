"""A small soak in every run: jobs keep their promises while workers are SIGKILLed and restarted.

The full size (500 jobs) runs by hand: ``.venv/bin/python -m tests.soak --jobs 500``.
"""

from tests.soak import soak


def test_jobs_through_workers_killed_every_two_seconds_all_end_final_none_twice_none_lost():
    report = soak(jobs=60, kill_every=2.0)
    print("\n".join(report.lines()))  # shown by pytest when the test failed
    assert report.kills >= 1, "the soak must kill a worker at least once to prove anything"
    assert report.not_final == 0
    assert report.steps_run_twice == 0
    assert report.completed_in_the_end == report.jobs
