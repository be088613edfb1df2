"""The process's heartbeat thread: each job beaten at its own interval, and never after it ended."""

import threading
import uuid

from provisioning.jobs.heartbeat import Heartbeat
from tests.helpers import wait_for


class ScriptedHeartbeat(Heartbeat):
    """A heartbeat whose beats are counted instead of written; ``hold`` keeps a beat in flight."""

    def __init__(self, interval: float, keep_beating: bool = True):
        super().__init__(None, uuid.uuid4(), "worker@test", interval, 30.0, terminator=None)
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
