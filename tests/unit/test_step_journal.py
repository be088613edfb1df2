"""What the step journal writes, and when: every step's start before it runs, with the ends before it."""

import uuid

import pytest

from provisioning.enums import JobStatus, JobType, StepStatus
from provisioning.jobs.step_journal import StepJournal
from provisioning.jobs.workflows import workflow_for

CREATE = workflow_for(JobType.CREATE_SITE)


class Writer:
    """Records each write and answers with ``status``; the first ``failures`` writes raise, as a
    database outage would."""

    def __init__(self, failures: int = 0, status: JobStatus = JobStatus.RUNNING):
        self.writes: list[tuple[int | None, list]] = []
        self.failures = failures
        self.status = status

    def write_steps(self, job_id, worker, done, starting=None):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database went away")
        self.writes.append((starting and starting.position, [(record.position, record.status) for record in done]))
        return self.status


class Watch:
    def __init__(self):
        self.seen = []

    def saw(self, status):
        self.seen.append(status)


def journal(writer, started=0, watch=None):
    return StepJournal(writer, watch or Watch(), uuid.uuid4(), "w@test pid 1", CREATE, started)


def run_quickly(steps_journal, positions):
    for position in positions:
        assert steps_journal.begin(position, CREATE.steps[position]) == JobStatus.RUNNING
        steps_journal.complete(position, "ok")


def test_every_start_is_written_before_its_step_runs_with_the_end_of_the_step_before():
    writer = Writer()
    run_quickly(journal(writer), range(5))

    # The claim wrote the first start; each later start goes with the end before it.
    assert writer.writes == [(position, [(position - 1, StepStatus.COMPLETED)]) for position in range(1, 5)]


def test_a_skipped_step_goes_on_record_with_the_next_start():
    writer = Writer()
    steps_journal = journal(writer)
    run_quickly(steps_journal, [0])
    steps_journal.skip(1, "Skipped: the job asked for it")
    run_quickly(steps_journal, [2])

    assert writer.writes == [(2, [(0, StepStatus.COMPLETED), (1, StepStatus.SKIPPED)])]


def test_a_cancel_read_by_a_start_s_write_keeps_the_step_from_starting_and_the_watch_learns_it():
    watch = Watch()
    writer = Writer()
    steps_journal = journal(writer, watch=watch)
    run_quickly(steps_journal, [0])
    writer.status = JobStatus.CANCELLING

    assert steps_journal.begin(1, CREATE.steps[1]) == JobStatus.CANCELLING
    assert watch.seen == [JobStatus.CANCELLING]
    with steps_journal.written_by_caller() as left:
        assert left == [], "the end written with the refused start is not written again"


def test_the_last_end_waits_for_the_caller_s_write_which_forgets_it_only_once_it_returned():
    steps_journal = journal(Writer())
    run_quickly(steps_journal, range(5))
    with pytest.raises(ConnectionError), steps_journal.written_by_caller():
        raise ConnectionError("the completion's commit failed")
    with steps_journal.written_by_caller() as done:
        assert [(record.position, record.status) for record in done] == [(4, StepStatus.COMPLETED)]
        assert done[0].started_at is None, "a start already written is not written again"
    with steps_journal.written_by_caller() as done:
        assert done == []


def test_ends_survive_a_write_that_failed_and_go_out_with_the_next():
    writer = Writer(failures=1)
    steps_journal = journal(writer)
    run_quickly(steps_journal, [0])

    with pytest.raises(ConnectionError):
        steps_journal.begin(1, CREATE.steps[1])
    assert steps_journal.flush() == JobStatus.RUNNING

    assert writer.writes == [(None, [(0, StepStatus.COMPLETED)])]


def test_a_job_whose_claim_started_no_step_writes_its_first_start_itself():
    writer = Writer()
    run_quickly(journal(writer, started=None), [0])
    assert writer.writes == [(0, [])]
