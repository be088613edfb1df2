"""The job state machine: what may follow what, and that finished is final."""

import pytest

from provisioning.enums import JobStatus
from provisioning.jobs.states import (
    FINAL_STATUSES,
    RETRYABLE_STATUSES,
    TRANSITIONS,
    can_transition,
    sources_of,
)
from provisioning.models import ACTIVE_JOB_STATUSES


def test_completed_failed_and_cancelled_are_final_and_nothing_leaves_them():
    assert FINAL_STATUSES == {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
    for final in FINAL_STATUSES:
        assert not any(can_transition(final, target) for target in JobStatus)


def test_the_active_statuses_of_the_schema_are_those_the_table_of_moves_lets_a_job_leave():
    """The partial unique index (one active job per tenant) is built from ``ACTIVE_JOB_STATUSES``
    in the models, below the jobs package: a status added to the table must be added there too."""
    assert set(ACTIVE_JOB_STATUSES) == set(JobStatus) - FINAL_STATUSES


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobStatus.PENDING, JobStatus.RUNNING),
        (JobStatus.PENDING, JobStatus.CANCELLED),
        (JobStatus.RUNNING, JobStatus.COMPLETED),
        (JobStatus.RUNNING, JobStatus.FAILED),
        (JobStatus.RUNNING, JobStatus.CANCELLING),
        (JobStatus.CANCELLING, JobStatus.CANCELLED),
        (JobStatus.CANCELLING, JobStatus.FAILED),
    ],
)
def test_the_design_transitions_are_allowed(current, target):
    assert can_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobStatus.PENDING, JobStatus.COMPLETED),
        (JobStatus.PENDING, JobStatus.CANCELLING),
        (JobStatus.RUNNING, JobStatus.PENDING),
        (JobStatus.RUNNING, JobStatus.CANCELLED),
        (JobStatus.CANCELLING, JobStatus.COMPLETED),
        (JobStatus.CANCELLING, JobStatus.RUNNING),
    ],
)
def test_shortcuts_around_the_machine_are_refused(current, target):
    assert not can_transition(current, target)


def test_every_status_can_reach_a_final_one():
    def reaches_final(status, seen=()):
        return status in FINAL_STATUSES or any(
            reaches_final(nxt, seen + (status,)) for nxt in TRANSITIONS[status] if nxt not in seen
        )

    assert all(reaches_final(status) for status in JobStatus)


def test_only_finished_successes_and_failures_can_be_retried():
    assert RETRYABLE_STATUSES == {JobStatus.COMPLETED, JobStatus.FAILED}


def test_the_sources_of_a_move_are_read_from_the_table():
    assert sources_of(JobStatus.FAILED) == {JobStatus.RUNNING, JobStatus.CANCELLING}
    assert sources_of(JobStatus.CANCELLED) == {JobStatus.PENDING, JobStatus.CANCELLING}
    assert sources_of(JobStatus.PENDING) == set()
