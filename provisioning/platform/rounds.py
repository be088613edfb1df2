"""A background thread's loop: a round of work again and again, a short rest when a round found
little to do, and while rounds fail (the database or the broker down) a wait that doubles up to a
cap, until the thread is told to stop. The event relay and the webhooks' runner both run one."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from tenacity import RetryCallState, Retrying, wait_exponential

log = logging.getLogger(__name__)

# After a failed round the loop waits this long, doubling up to the cap.
RETRY_SECONDS, MAX_RETRY_SECONDS = 1.0, 30.0


def run_rounds(do_round: Callable[[], bool], stopped: threading.Event, idle_seconds: float, what: str) -> None:
    """Run ``do_round`` until ``stopped`` is set; it answers whether more work may be waiting at
    once (no rest before the next round). A failing round is tried again after RETRY_SECONDS,
    doubling up to MAX_RETRY_SECONDS; its first failure is logged as a warning naming ``what``
    waits, and the round that works again after it, at info."""

    def say_it_waits(failed: RetryCallState) -> None:
        if failed.attempt_number == 1:
            log.warning("%s: cannot go on (%s); it waits, and goes on once it works", what, failed.outcome.exception())

    rounds = Retrying(
        wait=wait_exponential(multiplier=RETRY_SECONDS, max=MAX_RETRY_SECONDS),
        sleep=stopped.wait,
        stop=lambda _state: stopped.is_set(),
        before_sleep=say_it_waits,
        retry_error_callback=lambda _state: False,
    )
    while not stopped.is_set():
        busy = rounds(do_round)
        if rounds.statistics["attempt_number"] > 1 and not stopped.is_set():
            log.info("%s: going on again after %.0f s", what, rounds.statistics["idle_for"])
        if not busy:
            stopped.wait(idle_seconds)
