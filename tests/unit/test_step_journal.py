"""What the step journal writes, and when: the batching of quick steps, as pure logic."""

import uuid

import pytest

from provisioning.enums import JobStatus, JobType, StepStatus
from provisioning.step_journal import StepJournal
from provisioning.workflows import workflow_for

CREATE = workflow_for(JobType.CREATE_SITE)
DELETE = workflow_for(JobType.DELETE_SITE)


class Writer:
    """Records each write; the first ``failures`` writes raise, as a database outage would."""

    def __init__(self, failures: int = 0):
        self.writes: list[tuple[str, int | None, list]] = []
        self.failures = failures

    def write_steps(self, job_id, worker, done, starting=None):
        return self._write("steps" if starting is None else "begin", starting and starting.position, done)

    def _write(self, kind, position, done):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database went away")
        self.writes.append((kind, position, [(record.position, record.status) for record in done]))
        return JobStatus.RUNNING


class Watch:
    def __init__(self, status=JobStatus.RUNNING):
        self.current = status

    def status(self, fresh=False):
        return self.current

    def saw(self, status):
        self.current = status


def journal(writer, workflow=CREATE, interval=60.0, watch=None):
    return StepJournal(writer, watch or Watch(), uuid.uuid4(), "w@test pid 1", workflow, interval)


def run_quickly(steps_journal, workflow, positions):
    for position in positions:
        assert steps_journal.begin(position, workflow.steps[position]) == JobStatus.RUNNING
        steps_journal.complete(position, "ok")


def test_quick_steps_are_kept_except_the_start_of_a_turning_point_which_is_written_before_it_runs():
    writer = Writer()
    create = journal(writer)
    run_quickly(create, CREATE, range(5))

    # create_site (changes_from) is written at once, with check_preconditions done before it.
    assert writer.writes == [("begin", 1, [(0, StepStatus.COMPLETED)])]
    with create.written_by_caller() as done:
        assert [(record.position, record.status) for record in done] == [(1, StepStatus.COMPLETED)] + [
            (position, StepStatus.COMPLETED) for position in range(2, 5)
        ]
        assert done[0].started_at is None, "a start already written is not written again"


def test_drop_site_the_point_of_no_return_is_on_record_before_it_runs():
    writer = Writer()
    run_quickly(journal(writer, DELETE), DELETE, range(5))
    assert [(kind, position) for kind, position, _ in writer.writes] == [("begin", DELETE.position_of("drop_site"))]


def test_steps_slower_than_the_interval_are_each_written_as_they_start():
    writer = Writer()
    run_quickly(journal(writer, interval=0), CREATE, range(5))
    assert [position for _, position, _ in writer.writes] == [0, 1, 2, 3, 4]


def test_what_is_kept_survives_a_write_that_failed_and_goes_out_with_the_next():
    writer = Writer(failures=1)
    steps_journal = journal(writer)
    run_quickly(steps_journal, CREATE, [0])
    steps_journal.interval = 0  # now due

    with pytest.raises(ConnectionError):
        steps_journal.flush()
    assert steps_journal.flush() == JobStatus.RUNNING

    assert writer.writes == [("steps", None, [(0, StepStatus.COMPLETED)])]


def test_the_caller_s_write_forgets_what_is_kept_only_when_it_returned():
    steps_journal = journal(Writer())
    run_quickly(steps_journal, CREATE, [0])
    with pytest.raises(ConnectionError), steps_journal.written_by_caller():
        raise ConnectionError("the completion's commit failed")
    with steps_journal.written_by_caller() as done:
        assert [record.position for record in done] == [0]
    with steps_journal.written_by_caller() as done:
        assert done == []


def test_a_step_that_runs_past_the_interval_is_written_when_the_driver_next_asks_whether_to_stop():
    writer = Writer()
    steps_journal = journal(writer)
    assert steps_journal.begin(0, CREATE.steps[0]) == JobStatus.RUNNING
    assert not steps_journal.should_stop() and writer.writes == []

    steps_journal.interval = 0  # the step has now run that long
    assert not steps_journal.should_stop()
    assert writer.writes == [("steps", None, [(0, StepStatus.RUNNING)])]


def test_a_cancel_seen_between_quick_steps_keeps_the_next_step_from_starting():
    watch = Watch()
    writer = Writer()
    steps_journal = journal(writer, watch=watch)
    run_quickly(steps_journal, CREATE, [0])
    watch.current = JobStatus.CANCELLING

    assert steps_journal.begin(2, CREATE.steps[2]) == JobStatus.CANCELLING
    with steps_journal.written_by_caller() as done:
        assert [(record.position, record.status) for record in done] == [(0, StepStatus.COMPLETED)]


def test_the_heartbeat_writes_what_is_overdue_with_its_own_writer_unless_the_runner_is_writing():
    runner_writer, heartbeat_writer = Writer(), Writer()
    steps_journal = journal(runner_writer)
    assert steps_journal.begin(0, CREATE.steps[0]) == JobStatus.RUNNING  # a deaf step: it never asks

    steps_journal.write_overdue(heartbeat_writer)
    assert heartbeat_writer.writes == [], "not due yet"
    steps_journal.interval = 0
    with steps_journal.written_by_caller() as kept:  # the runner is writing: the beat leaves it be
        steps_journal.write_overdue(heartbeat_writer)
        assert heartbeat_writer.writes == [] and [record.position for record in kept] == [0]

    assert steps_journal.begin(1, CREATE.steps[1]) == JobStatus.RUNNING  # written by the runner: a turning point
    assert steps_journal.begin(2, CREATE.steps[2]) == JobStatus.RUNNING  # due (the interval is 0): written by the runner
    steps_journal.interval = 60
    assert steps_journal.begin(3, CREATE.steps[3]) == JobStatus.RUNNING  # kept
    steps_journal.interval = 0
    steps_journal.write_overdue(heartbeat_writer)
    assert heartbeat_writer.writes == [("steps", None, [(3, StepStatus.RUNNING)])]
    assert runner_writer.writes == [("begin", 1, []), ("begin", 2, [])]
