"""Job events for other systems: each status change, relayed from the job's record to a topic exchange.

Billing or notifications bind a queue to the durable topic exchange ``<job queue>.events``
(``erpmax.provisioning.events`` by default; workers and the API declare it with the queues) with
a routing key such as ``job.completed`` or ``job.*``. The event of a status change is written in
the same transaction as the change: it is the outbox of its announcement. The relay (the
sweeper process runs it) publishes the events not announced yet, oldest first, waits for the
broker's confirms, and only then marks them announced. So no announcement is lost with the
process that made the change, or while the broker is down: it goes out late, in order, and at
worst twice (a relay stopped between the publish and the mark); its ``event_id`` lets a consumer
drop the second copy.
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import datetime

from kombu import Connection, Producer
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from celeryconfig import PUBLISH_CONFIRM_TIMEOUT, events_exchange
from provisioning.models import JobEvent
from provisioning.platform.db import utcnow
from provisioning.platform.rounds import run_rounds
from provisioning.platform.settings import Settings

BATCH_SIZE = 500
# How often an idle relay looks for new events: the longest an announcement waits for it.
IDLE_SECONDS = 0.25

UNANNOUNCED = (JobEvent.status.is_not(None), JobEvent.announced_at.is_(None))
# The next batch to announce, oldest first (rows another relay holds are left to it), and its mark.
WAITING_EVENTS = (
    select(JobEvent.id, JobEvent.job_id, JobEvent.status, JobEvent.kind, JobEvent.actor, JobEvent.detail, JobEvent.created_at)
    .where(*UNANNOUNCED)
    .order_by(JobEvent.id)
    .limit(bindparam("batch_size"))
    .with_for_update(skip_locked=True)
)
MARK_ANNOUNCED = update(JobEvent).where(JobEvent.id.in_(bindparam("ids", expanding=True))).values(announced_at=bindparam("now"))


def announcement(event) -> tuple[str, dict]:
    """The routing key and body of an event's announcement."""
    body = {
        "event_id": event.id, "job_id": str(event.job_id), "status": event.status.value, "event": event.kind,
        "actor": event.actor, "detail": event.detail, "at": event.created_at.isoformat(),
    }  # fmt: skip
    return f"job.{event.status.value}", body


def waiting(session: Session) -> tuple[int, datetime | None]:
    """How many announcements wait for the relay, and when the oldest of them happened."""
    count, oldest = session.execute(select(func.count(), func.min(JobEvent.created_at)).where(*UNANNOUNCED)).one()
    return count, oldest


class ConfirmedPublisher:
    """Publishes a batch of messages to the events exchange, then waits once for the broker to
    confirm them all: a confirm per message would cost the round trip per message.

    RabbitMQ confirms (publisher confirms). The embedded broker (Redis) has no confirms and needs
    none: each publish returns only once Redis has answered that it stored the message, so a
    batch marked announced was taken whole, if only into memory that is gone when it stops.

    One connection serves every batch until a publish fails; then the next batch opens a new one
    (and a new channel, whose confirms count from one again).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._producer: Producer | None = None
        self._unconfirmed: set[int] = set()
        self._refused = False
        self._sent = 0
        self._confirming = False

    def publish(self, messages: list[tuple[str, dict]]) -> None:
        """Raises when the broker cannot be reached, refuses a message or does not confirm them in time."""
        try:
            producer = self._producer or self._connect()
            for routing_key, body in messages:
                producer.publish(body, routing_key=routing_key, delivery_mode="persistent")
                if self._confirming:
                    self._sent += 1
                    self._unconfirmed.add(self._sent)
            deadline = time.monotonic() + PUBLISH_CONFIRM_TIMEOUT
            while self._unconfirmed and not self._refused:
                producer.connection.drain_events(timeout=max(0.0, deadline - time.monotonic()))
            if self._refused:
                raise RuntimeError("the broker refused (nacked) an event")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let the connection go without talking to the broker (it may be gone)."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.connection.collect()
        self._producer = None

    def _connect(self) -> Producer:
        connection = Connection(self.settings.broker_url, connect_timeout=self.settings.broker_connect_timeout)
        producer = connection.Producer(exchange=events_exchange(self.settings), serializer="json")
        producer.declare()
        channel = producer.channel
        self._confirming = hasattr(channel, "confirm_select")  # AMQP's, which Redis transports lack
        if self._confirming:
            channel.events["basic_ack"].add(self._confirmed)
            channel.events["basic_nack"].add(self._nacked)
            channel.confirm_select()
        self._producer, self._unconfirmed, self._refused, self._sent = producer, set(), False, 0
        return producer

    def _confirmed(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self._unconfirmed = {tag for tag in self._unconfirmed if tag > delivery_tag}
        else:
            self._unconfirmed.discard(delivery_tag)

    def _nacked(self, delivery_tag: int, multiple: bool) -> None:
        self._refused = True


class EventRelay:
    """Publishes the events not announced yet, in the order they happened, and marks them.

    Run one per deployment (the sweeper's): two relays would not publish an event twice (each takes the
    rows it reads, and skips those the other holds), but could announce one job's changes out of
    order.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], batch_size: int = BATCH_SIZE):
        self.sessions = sessions
        self.batch_size = batch_size
        self.publisher = ConfirmedPublisher(settings)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def relay(self) -> int:
        """Publish the next batch of waiting events and mark them announced; how many went out.

        Raises when the broker or the database fails: then nothing is marked, and the same
        events go out with a later batch.
        """
        with self.sessions() as session:
            connection = session.connection()
            events = connection.execute(WAITING_EVENTS, {"batch_size": self.batch_size}).all()
            if not events:
                return 0
            self.publisher.publish([announcement(event) for event in events])
            connection.execute(MARK_ANNOUNCED, {"ids": [event.id for event in events], "now": utcnow()})
            session.commit()
        return len(events)

    def start(self) -> None:
        """Relay from a thread of its own until ``stop()``."""
        self._thread = threading.Thread(target=self._run, name="event-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.publisher.close()

    def _run(self) -> None:
        run_rounds(lambda: self.relay() >= self.batch_size, self._stopped, IDLE_SECONDS, "event relay: publishing job events")
