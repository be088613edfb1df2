"""Talking to the broker: its URL, JSON publishing, and sending job tasks by name."""

from __future__ import annotations

import logging
import time
import uuid
from functools import partial
from typing import Any, Iterable

from amqp.exceptions import NotFound
from celery import Celery
from kombu import Connection, Exchange, Queue, compression

import celeryconfig
from provisioning.errors import BrokerUnreachable
from provisioning.platform import logs
from provisioning.platform.settings import Settings, get_rabbitmq_url, load_settings

log = logging.getLogger(__name__)

__all__ = ["Dispatcher", "get_rabbitmq_url", "publish_json", "queue_depths", "refuse_compressed_bodies"]


def publish_json(queue_name: str, message: Any, settings: Settings | None = None) -> None:
    """Publish one JSON message to a durable queue of that name, declared first, with a confirm."""
    settings = settings or load_settings()
    with confirming_connection(settings) as connection:
        send_json(connection, message, routing_key=queue_name, declare=celeryconfig.queue_named(queue_name, settings))


def confirming_connection(settings: Settings) -> Connection:
    """A connection whose publishes return only once the broker has taken the message."""
    return Connection(
        settings.broker_url, connect_timeout=settings.broker_connect_timeout, transport_options={"confirm_publish": True}
    )


def send_json(
    connection: Connection, message: Any, routing_key: str, declare: Queue | Exchange, exchange: Exchange | str = ""
) -> None:
    """Publish persistently with a bounded retry and confirm; raises when the broker cannot take it."""
    connection.Producer(serializer="json").publish(
        message,
        exchange=exchange,
        routing_key=routing_key,
        declare=[declare],
        delivery_mode="persistent",
        retry=True,
        retry_policy=celeryconfig.PUBLISH_RETRY_POLICY,
        confirm_timeout=celeryconfig.PUBLISH_CONFIRM_TIMEOUT,
    )


class CompressedBodyRefused(ValueError):
    """A message came with a compressed body, which this process does not expand."""


def refuse_compressed_bodies() -> None:
    """From now on, this process keeps every compressed body as it came instead of expanding it.

    kombu expands a body named compressed (a ``compression`` header) as it receives the message,
    before any code of ours can look at it, and without a bound: a few kilobytes of bzip2 can
    grow to gigabytes and kill the worker, which would then meet the same message again after
    its restart. No publisher of ours compresses, so a compressed body is refused: the message
    keeps its bytes, fails to decode, and is dead-lettered (and listed, and replayed) exactly as
    it came. Compressing what this process sends is unchanged.
    """
    for content_type in compression.encoders():
        encoder, _ = compression.get_encoder(content_type)
        compression.register(encoder, partial(_refuse_to_expand, content_type), content_type)


def _refuse_to_expand(content_type: str, _body: bytes) -> bytes:
    raise CompressedBodyRefused(f"compressed body ({content_type}) refused: no publisher of ours compresses")


def queue_depths(settings: Settings, server_names: Iterable[str] = ()) -> dict[str, int | None]:
    """How many messages wait in the job queue of each server named (by default, this process's
    own, SERVER_NAME) and in the dead-letter queue; None for a queue nobody has declared yet (a
    worker or the first publish to it does).

    RabbitMQ is asked with a passive declare, which makes nothing. The embedded broker (Redis)
    keeps no trace of an empty queue, so a passive declare would call it missing even once a
    worker declared it: there the queues are declared, which stores nothing but their bindings.

    Raises:
        kombu / socket errors: the broker cannot be reached.
    """
    jobs, dead = celeryconfig.provisioning_queues(settings)
    queues = [celeryconfig.job_queue(settings.queue_of_server(name), settings) for name in server_names] or [jobs]
    depths: dict[str, int | None] = {}
    with Connection(settings.broker_url, connect_timeout=settings.broker_connect_timeout) as connection:
        for queue in [*queues, dead]:
            # A channel each: RabbitMQ closes the channel of a passive declare that found nothing.
            with connection.channel() as channel:
                try:
                    depths[queue.name] = queue(channel).queue_declare(passive=not settings.embedded).message_count
                except NotFound:
                    depths[queue.name] = None
    return depths


class Dispatcher:
    """Sends ``provisioning.run_job`` with the payload ``{"job_id": ...}`` and the job id as task id.

    It uses a Celery app of its own built from ``celeryconfig``, so the API never imports the
    worker's code; the app and its connection pool are made on first use, after any fork.
    After a failed publish it stops trying for ``pause_after_failure`` seconds: while the
    broker is down, each request then fails fast instead of waiting on the network again.
    """

    def __init__(self, settings: Settings, pause_after_failure: float = 5.0):
        self.settings = settings
        self.pause_after_failure = pause_after_failure
        self._app: Celery | None = None
        self._paused_until = 0.0
        self._declared: set[str] = set()

    @property
    def app(self) -> Celery:
        if self._app is None:
            app = Celery("provisioning-dispatch", set_as_current=False)
            app.conf.update(celeryconfig.build(self.settings))
            self._app = app
        return self._app

    def send_job(self, job_id: uuid.UUID, server_name: str) -> None:
        """Publish the job's message to the queue of ``server_name``, the server its tenant is on;
        before the first one there, and again after a failure, declare that queue, the dead-letter
        queue and the events exchange (RabbitMQ confirms a message no queue takes, and drops it).

        Raises:
            BrokerUnreachable: a publish failed less than ``pause_after_failure`` seconds ago.
            kombu / socket errors: the broker could not take the message now.
        """
        if time.monotonic() < self._paused_until:
            raise BrokerUnreachable("the broker failed a moment ago; not trying again yet")
        queue_name = self.settings.queue_of_server(server_name)
        try:
            if queue_name not in self._declared:
                self._declare_queues(queue_name)
            self.app.send_task(
                celeryconfig.RUN_JOB_TASK,
                kwargs={"job_id": str(job_id)},
                task_id=str(job_id),
                queue=queue_name,
                retry=True,
                retry_policy=celeryconfig.PUBLISH_RETRY_POLICY,
                confirm_timeout=celeryconfig.PUBLISH_CONFIRM_TIMEOUT,
                # The worker binds it, so the request's log lines and the job's can be found together.
                headers={celeryconfig.REQUEST_ID_HEADER: request_id} if (request_id := logs.current("request_id")) else None,
            )
        except Exception:
            self._declared.clear()
            self._paused_until = time.monotonic() + self.pause_after_failure
            raise

    def _declare_queues(self, queue_name: str) -> None:
        """Once per queue, not with every message: passing them to each publish (kombu's
        ``declare``) cost about a tenth of a create request's CPU, even when kombu knew them declared."""
        queue = celeryconfig.job_queue(queue_name, self.settings)
        # Celery declares the queue it sends to, as its app knows it: a name it does not know is a
        # plain queue, which RabbitMQ refuses to declare again without our dead-letter arguments.
        self.app.amqp.queues.setdefault(queue_name, queue)
        with self.app.producer_or_acquire() as producer:
            celeryconfig.declare_queues(producer.channel, self.settings)
            queue(producer.channel).declare()
        self._declared.add(queue_name)
