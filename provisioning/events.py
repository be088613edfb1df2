"""Job events for other systems: each status change, published to a topic exchange.

Billing or notifications bind a queue to ``erpmax.provisioning.events`` with a routing key such as
``job.completed`` or ``job.*``. Publishing happens on a thread of its own from an in-memory
buffer, so a slow or absent broker never delays or fails a job: an event that cannot be sent is
logged and counted (``lost``), and the job's own record (``GET /jobs/{id}/events``) keeps it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from functools import lru_cache

from kombu import Exchange, Producer

from celeryconfig import PUBLISH_CONFIRM_TIMEOUT
from provisioning.broker import confirming_connection
from provisioning.settings import Settings

log = logging.getLogger(__name__)

BUFFERED_EVENTS = 1000
# An event is tried again once on a new connection (the broker restarted since the last one).
PUBLISH_ATTEMPTS = 2


def events_exchange(settings: Settings) -> Exchange:
    return Exchange(settings.events_exchange_name, type="topic", durable=True)


class EventPublisher:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.lost = 0
        self._buffer: queue.Queue[tuple[str, dict]] = queue.Queue(maxsize=BUFFERED_EVENTS)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def announce(self, routing_key: str, event: dict) -> None:
        """Queue an event for publishing; never blocks and never raises."""
        self._ensure_thread()
        try:
            self._buffer.put_nowait((routing_key, event))
        except queue.Full:
            self._lose(event, "the buffer is full")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was published or given up; True if the buffer drained."""
        done = threading.Event()
        self._buffer.put(("", {"_flush": done}))
        self._ensure_thread()
        return done.wait(timeout)

    def _ensure_thread(self) -> None:
        # A forked process (a gunicorn or Celery pool process) starts its own thread.
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        producer: Producer | None = None
        while True:
            routing_key, event = self._buffer.get()
            if "_flush" in event:
                event["_flush"].set()
                continue
            for attempt in range(PUBLISH_ATTEMPTS):
                try:
                    producer = producer or self._connect()
                    producer.publish(
                        event, routing_key=routing_key, delivery_mode="persistent", confirm_timeout=PUBLISH_CONFIRM_TIMEOUT
                    )
                    break
                except Exception as error:
                    producer = _release(producer)
                    if attempt == PUBLISH_ATTEMPTS - 1:
                        self._lose(event, f"{type(error).__name__}: {error}")

    def _connect(self) -> Producer:
        """A producer for every event until one fails: a connection, a channel and the exchange's
        declaration once, not per event (that was most of an event's cost)."""
        return confirming_connection(self.settings).Producer(exchange=events_exchange(self.settings), serializer="json")

    def _lose(self, event: dict, why: str) -> None:
        self.lost += 1
        log.warning(
            "job %s: event %s not published (%s); %d lost so far", event.get("job_id"), event.get("event"), why, self.lost
        )


def _release(producer: Producer | None) -> None:
    """Let a failed producer's connection go without talking to the broker (it may be gone); the
    next event opens a new one."""
    if producer is not None:
        with contextlib.suppress(Exception):  # this thread must outlive any broker's failure
            producer.connection.collect()


@lru_cache(maxsize=None)
def publisher_for(settings: Settings) -> EventPublisher:
    """One publisher (and thread) per process and broker."""
    return EventPublisher(settings)
