"""The background loop the event relay and the webhooks' runner run: a failing round is tried
again after a wait, said once, and the loop ends when told to."""

from __future__ import annotations

import logging
import threading

from provisioning.platform.rounds import run_rounds


def test_a_failing_round_is_tried_again_until_it_works_and_the_loop_ends_when_told(caplog):
    stopped = threading.Event()
    calls = []

    def do_round() -> bool:
        calls.append(len(calls))
        if len(calls) <= 2:
            raise ConnectionError("database down")
        if len(calls) == 4:
            stopped.set()
        return True  # busy: the next round comes at once

    with caplog.at_level(logging.INFO, logger="provisioning.platform.rounds"):
        loop = threading.Thread(target=run_rounds, args=(do_round, stopped, 60.0, "test loop"))
        loop.start()
        loop.join(timeout=30)

    assert not loop.is_alive() and len(calls) == 4
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "test loop: cannot go on (database down); it waits, and goes on once it works",
        "test loop: going on again after 3 s",  # 1 s, then 2 s
    ]


def test_a_stop_ends_the_wait_after_a_failed_round_at_once():
    stopped = threading.Event()

    def do_round() -> bool:
        stopped.set()
        raise ConnectionError("broker down")

    loop = threading.Thread(target=run_rounds, args=(do_round, stopped, 60.0, "test loop"))
    loop.start()
    loop.join(timeout=5)
    assert not loop.is_alive()
