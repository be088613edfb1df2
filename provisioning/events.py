"""Job events for other systems: each status change, published to a topic exchange.

Billing or notifications bind a queue to ``erpmax.provisioning.events`` with a routing key such as
``job.completed`` or ``job.*``. Publishing happens on a thread of its own from an in-memory
buffer, so a slow or absent broker never delays or fails a job: an event that cannot be sent is
logged and counted (``lost``), and the job's own record (``GET /jobs/{id}/events``) keeps it.
"""

from __future__ import annotations

import logging
import queue
import threading
from functools import lru_cache

from kombu import Exchange

from provisioning.broker import confirming_connection, send_json
from provisioning.settings import Settings

log = logging.getLogger(__name__)

BUFFERED_EVENTS = 1000


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
        exchange = events_exchange(self.settings)
        connection = confirming_connection(self.settings)
        while True:
            routing_key, event = self._buffer.get()
            if "_flush" in event:
                event["_flush"].set()
                continue
            try:
                send_json(connection, event, routing_key=routing_key, declare=exchange, exchange=exchange)
            except Exception as error:
                self._lose(event, f"{type(error).__name__}: {error}")
                connection.release()
                connection = connection.clone()

    def _lose(self, event: dict, why: str) -> None:
        self.lost += 1
        log.warning(
            "job %s: event %s not published (%s); %d lost so far", event.get("job_id"), event.get("event"), why, self.lost
        )


@lru_cache(maxsize=None)
def publisher_for(settings: Settings) -> EventPublisher:
    """One publisher (and thread) per process and broker."""
    return EventPublisher(settings)
