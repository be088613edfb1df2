"""The process's heartbeat thread: each job beaten at its own interval, never after it ended, and
what a beat's answer says (a cancel, its grace period over, the job taken away) set in the flags
the job's step reads."""

import logging
import threading
import uuid
from datetime import timedelta

from provisioning.jobs.heartbeat import Heartbeat
from provisioning.jobs.records import Beat
from provisioning.jobs.step_interruptions import GRACE_OVER, TAKEN_AWAY, StopFlags
from provisioning.platform.db import utcnow
from tests.helpers import wait_for


class ScriptedHeartbeat(Heartbeat):
    """A heartbeat whose beats are counted instead of written; ``hold`` keeps a beat in flight."""

    def __init__(self, interval: float, keep_beating: bool = True):
        super().__init__(None, uuid.uuid4(), "worker@test", interval, 30.0, StopFlags())
        self.beats = 0
        self.keep_beating = keep_beating
        self.hold = threading.Event()
        self.hold.set()
        self.in_beat = threading.Event()

    def beat(self) -> bool:
        self.in_beat.set()
        self.hold.wait(10)
        self.beats += 1
        return self.keep_beating


def test_each_running_job_is_beaten_at_its_own_interval_by_one_thread():
    threads_before = threading.active_count()
    with ScriptedHeartbeat(0.02) as quick, ScriptedHeartbeat(30.0) as slow:
        wait_for(lambda: quick.beats >= 10, timeout=10, what="ten quick beats")
        assert slow.beats == 0
        assert threading.active_count() - threads_before <= 1, "no thread per job"


def test_a_job_no_longer_its_workers_is_not_beaten_again():
    with ScriptedHeartbeat(0.01, keep_beating=False) as lost, ScriptedHeartbeat(0.01) as other:
        wait_for(lambda: other.beats >= 5, timeout=10, what="the other job's beats")
        assert lost.beats == 1


def test_a_job_ends_only_once_its_beat_in_flight_is_done_and_is_never_beaten_after():
    heartbeat = ScriptedHeartbeat(0.01)
    heartbeat.hold.clear()
    ended = threading.Event()

    def run_job():
        with heartbeat:
            heartbeat.in_beat.wait(10)
        ended.set()

    job = threading.Thread(target=run_job)
    job.start()
    assert heartbeat.in_beat.wait(10)
    assert not ended.wait(0.2), "the job ended while its heartbeat was still writing"
    heartbeat.hold.set()
    job.join(10)
    beats_at_end = heartbeat.beats
    with ScriptedHeartbeat(0.01) as later:  # the thread keeps beating for other jobs...
        wait_for(lambda: later.beats >= 5, timeout=10, what="another job's beats")
    assert heartbeat.beats == beats_at_end == 1  # ...and never again for the ended one


class AnsweredHeartbeat(Heartbeat):
    """A heartbeat whose beats get the answers the test gives (``answer``), as the database would."""

    def __init__(self, cancel_grace: float = 30.0):
        super().__init__(None, uuid.uuid4(), "worker@test", 0.01, cancel_grace, StopFlags())
        self.answer: Beat | None = Beat(cancel_requested_at=None)
        self.asked = 0

    def ask(self) -> Beat | None:
        self.asked += 1
        return self.answer


def test_a_cancel_a_beat_learns_asks_the_step_to_stop_and_its_grace_period_over_makes_it_stop():
    with AnsweredHeartbeat(cancel_grace=30.0) as heartbeat:
        flags = heartbeat.flags
        wait_for(lambda: heartbeat.asked >= 2, timeout=10, what="beats")
        assert not flags.should_stop() and flags.must_stop() is None

        heartbeat.answer = Beat(cancel_requested_at=utcnow())
        wait_for(flags.should_stop, timeout=10, what="the cancel to reach the flags")
        assert flags.must_stop() is None, "a cooperative step has its grace period to stop by itself"
        assert not flags.should_stop(stops_for_a_cancel=False), "the point of no return runs on"

        heartbeat.answer = Beat(cancel_requested_at=utcnow() - timedelta(seconds=31))
        wait_for(lambda: flags.must_stop() == GRACE_OVER, timeout=10, what="the grace period to be over")
        assert flags.must_stop(stops_for_a_cancel=False) is None, "not even then does a cancel stop the point of no return"


def test_a_job_taken_away_stops_even_the_point_of_no_return_and_is_beaten_no_more():
    with AnsweredHeartbeat() as heartbeat:
        wait_for(lambda: heartbeat.asked >= 1, timeout=10, what="a beat")
        heartbeat.answer = None  # the sweeper failed the job: it is no longer this worker's
        wait_for(heartbeat.flags.taken_away.is_set, timeout=10, what="the job to be taken away")
        asked = heartbeat.asked
        with ScriptedHeartbeat(0.01) as other:  # the thread beats on for other jobs...
            wait_for(lambda: other.beats >= 5, timeout=10, what="another job's beats")
        assert heartbeat.asked == asked  # ...and no more for this one
    assert heartbeat.flags.must_stop(stops_for_a_cancel=False) == TAKEN_AWAY


def test_a_beat_that_cannot_reach_the_database_changes_no_flag_and_the_next_one_tries_again():
    class Unreachable(AnsweredHeartbeat):
        def ask(self):
            self.asked += 1
            raise ConnectionError("the database went away")

    with Unreachable() as heartbeat:
        wait_for(lambda: heartbeat.asked >= 3, timeout=10, what="beats tried again")
        assert not heartbeat.flags.should_stop(), "an outage is neither a cancel nor the job taken away"


def test_an_outage_is_logged_once_however_many_beats_it_fails_and_its_end_once(caplog):
    """The heartbeat tries every second per running job: one line per try would flood the log."""

    class Flaky(AnsweredHeartbeat):
        down = True

        def ask(self):
            self.asked += 1
            if self.down:
                raise ConnectionError("the database went away")
            return self.answer

    caplog.set_level(logging.INFO, logger="provisioning.jobs.heartbeat")
    with Flaky() as heartbeat:
        wait_for(lambda: heartbeat.asked >= 5, timeout=10, what="beats tried again")
        heartbeat.down = False
        asked = heartbeat.asked
        wait_for(lambda: heartbeat.asked >= asked + 3, timeout=10, what="beats answered again")
    messages = [record.getMessage() for record in caplog.records]
    assert sum("heartbeat failed (the database went away)" in message for message in messages) == 1
    assert sum("heartbeat answered again" in message for message in messages) == 1
