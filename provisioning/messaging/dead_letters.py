"""The dead-letter queue: messages a worker could not handle, each kept with the reason why.

A worker never loops on such a message and never drops it silently: it publishes the message
unchanged (body, content type, headers) to ``<queue>.dead`` with the reason in a header, then
acknowledges the original. An operator lists, replays or purges them with ``provisioning dlq``.

A reason may quote what a message holds, which anyone could have written: ``quoted`` keeps that
short, so a megabyte ``job_id`` makes neither a megabyte log line nor a reason header too big
for an AMQP frame. For the same reason, reading a dead letter never decodes or expands its body,
and what is shown of it is cut short and kept on one line.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from kombu import Connection, Producer, Queue
from kombu.exceptions import OperationalError
from kombu.message import Message

import celeryconfig
from provisioning.errors import BrokerUnreachable
from provisioning.messaging.broker import confirming_connection, refuse_compressed_bodies
from provisioning.platform.quoting import shortened
from provisioning.platform.settings import Settings

REASON_HEADER = "x-erpmax-dead-letter-reason"
QUEUE_HEADER = "x-erpmax-original-queue"
MAX_REASON_LENGTH = 300
MAX_SHOWN_BODY = 500
# An id longer than this (or not text) is not Celery's: the letter is named by its body's digest.
MAX_ID_LENGTH = 64


def reason_headers(reason: str, settings: Settings) -> dict[str, str]:
    """The headers that tell why a message was dead-lettered, and from which queue (this process's
    server's)."""
    return {REASON_HEADER: shortened(reason, MAX_REASON_LENGTH), QUEUE_HEADER: settings.worker_queue_name}


@dataclass(frozen=True)
class DeadLetter:
    id: str
    reason: str
    task: str | None
    body: str


def dead_letter(producer: Producer, message: Message, reason: str, settings: Settings) -> None:
    """Copy ``message`` into the dead-letter queue with ``reason``; the caller then acks the original."""
    publish_copy(
        producer,
        message,
        celeryconfig.queue_named(settings.dead_letter_queue_name, settings),
        headers={**(message.headers or {}), **reason_headers(reason, settings)},
    )


def publish_copy(producer: Producer, message: Message, queue: Queue, headers: dict) -> None:
    """Publish ``message``'s exact bytes again, so a copy decodes (or fails to) as the original did."""
    producer.publish(
        message.body,
        exchange="",
        routing_key=queue.name,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode="persistent",
        declare=[queue],
        retry=True,
        retry_policy=celeryconfig.PUBLISH_RETRY_POLICY,
        confirm_timeout=celeryconfig.PUBLISH_CONFIRM_TIMEOUT,
    )


def list_dead_letters(settings: Settings, limit: int = 100) -> list[DeadLetter]:
    """Look at up to ``limit`` dead letters without taking them (they stay in the queue, in order).

    Raises:
        BrokerUnreachable: the broker did not answer, or refused us.
    """
    with _broker(settings) as connection:
        return [_describe(message) for message in _peek(connection, settings, limit)]


def replay(settings: Settings, dead_letter_id: str) -> bool:
    """Send one dead letter back to the job queue it came from, as it was; False if no such id is
    waiting.

    Always to a job queue of this deployment's servers, whose dead letters these are: the one the
    letter's header names if it is one (a worker there sends the job on if it is another server's),
    else the default server's. Never to any other queue a header names: anyone who can publish can
    write that header.

    Raises:
        BrokerUnreachable: the broker did not answer, or refused us.
    """
    with _broker(settings) as connection:
        for message in _peek(connection, settings):
            if message_id(message) == dead_letter_id:
                headers = {k: v for k, v in (message.headers or {}).items() if k not in (REASON_HEADER, QUEUE_HEADER)}
                came_from = (message.headers or {}).get(QUEUE_HEADER)
                ours = isinstance(came_from, str) and celeryconfig.is_job_queue(came_from, settings)
                jobs_queue = celeryconfig.job_queue(came_from if ours else settings.provisioning_queue_name, settings)
                publish_copy(connection.Producer(), message, jobs_queue, headers)
                message.ack()
                return True
    return False


def purge(settings: Settings) -> int:
    """Delete every dead letter; returns how many there were.

    Raises:
        BrokerUnreachable: the broker did not answer, or refused us.
    """
    with _broker(settings) as connection:
        channel = connection.default_channel
        _queue(settings)(channel).declare()
        return channel.queue_purge(settings.dead_letter_queue_name) or 0


@contextmanager
def _broker(settings: Settings) -> Iterator[Connection]:
    """A confirming connection to the broker; failing to reach it, or being refused (a wrong
    password, a vhost we may not use), is one ``BrokerUnreachable`` that says why: the operator
    sees one line, not kombu's traceback."""
    connection = confirming_connection(settings)
    try:
        with connection:
            yield connection
    except (OperationalError, *connection.connection_errors, *connection.channel_errors) as error:
        raise BrokerUnreachable(f"cannot use the broker at {connection.as_uri()}: {error}") from None


def _queue(settings: Settings) -> Queue:
    return celeryconfig.queue_named(settings.dead_letter_queue_name, settings)


def _peek(connection: Connection, settings: Settings, limit: int | None = None) -> Iterator[Message]:
    """Messages taken without acknowledgement: whatever is not acked returns to the queue on close.

    Not ``Queue.get``, which raises on a body it cannot expand and so stops at that message:
    here such a message comes back like any other, with the error in its ``errors``.
    """
    refuse_compressed_bodies()
    channel = connection.default_channel
    queue = _queue(settings)(channel)
    queue.declare()
    taken = 0
    while limit is None or taken < limit:
        raw = channel.basic_get(queue=queue.name, no_ack=False)
        if raw is None:
            return
        taken += 1
        yield channel.message_to_python(raw)


def message_id(message: Message) -> str:
    """Celery's task id when there is one; otherwise a digest of the body, stable across listings."""
    for candidate in ((message.headers or {}).get("id"), message.properties.get("message_id")):
        if isinstance(candidate, str) and 0 < len(candidate) <= MAX_ID_LENGTH and candidate.isprintable():
            return candidate
    return hashlib.sha256(_raw(message)).hexdigest()[:16]


def _raw(message: Message) -> bytes:
    return message.body if isinstance(message.body, bytes) else str(message.body).encode()


def _describe(message: Message) -> DeadLetter:
    headers = message.headers or {}
    if message.errors:
        body = f"(undecodable: {message.errors[0][1]})"
    else:
        body = _raw(message).decode("utf-8", errors="replace")
    task = headers.get("task")
    return DeadLetter(
        id=message_id(message),
        reason=shortened(str(headers.get(REASON_HEADER) or _x_death_reason(headers)), MAX_REASON_LENGTH),
        task=None if task is None else shortened(str(task), 100),
        body=shortened(body, MAX_SHOWN_BODY),
    )


def _x_death_reason(headers: dict) -> str:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return f"dead-lettered by RabbitMQ ({deaths[0].get('reason')})"
    return "unknown"
