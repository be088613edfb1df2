"""The soak's step counts catch a step run again, within an attempt and by the retry that resumes it."""

import uuid

from tests.step_counts import Attempt, tally_steps

TENANT = uuid.uuid4()
FIRST, RETRY = uuid.uuid4(), uuid.uuid4()
JOBS = {FIRST: Attempt(TENANT, None), RETRY: Attempt(TENANT, FIRST)}
# The first attempt completed create_database and was killed in install_apps; its retry resumes there.
COMPLETED = [(FIRST, "create_database"), (RETRY, "install_apps"), (RETRY, "configure")]


def started(*runs: tuple[uuid.UUID, str]) -> str:
    return "".join(f"INFO worker provisioning.jobs.runner: job {job}: step {step} started\n" for job, step in runs)


def test_a_retry_that_resumes_in_the_step_its_worker_was_killed_in_runs_nothing_twice():
    logs = started((FIRST, "create_database"), (FIRST, "install_apps"), (RETRY, "install_apps"), (RETRY, "configure"))
    counts = tally_steps(JOBS, COMPLETED, logs)
    assert (counts.started, counts.run_twice, counts.rerun_by_retry, counts.unlogged) == (4, 0, 0, 0)
    assert counts.kept


def test_a_retry_that_runs_a_step_its_failed_attempt_had_completed_is_caught():
    logs = started(
        (FIRST, "create_database"), (FIRST, "install_apps"),
        (RETRY, "create_database"), (RETRY, "install_apps"), (RETRY, "configure"),
    )  # fmt: skip
    counts = tally_steps(JOBS, COMPLETED, logs)
    assert (counts.run_twice, counts.rerun_by_retry) == (0, 1)
    assert not counts.kept


def test_a_step_started_twice_within_one_attempt_is_caught():
    logs = started((FIRST, "create_database"), (FIRST, "create_database"), (FIRST, "install_apps"))
    logs += started((RETRY, "install_apps"), (RETRY, "configure"))
    assert tally_steps(JOBS, COMPLETED, logs).run_twice == 1


def test_logs_that_no_longer_show_step_starts_prove_nothing_and_say_so():
    counts = tally_steps(JOBS, COMPLETED, "the log format changed\n")
    assert counts.unlogged == len(COMPLETED) and not counts.kept
