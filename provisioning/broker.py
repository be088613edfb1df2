"""Talking to the broker: its URL, JSON publishing, and sending job tasks by name."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from kombu import Connection, Queue

import celeryconfig
from provisioning.settings import Settings, get_rabbitmq_url, load_settings

PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}

__all__ = ["Dispatcher", "get_rabbitmq_url", "publish_json"]


def publish_json(queue_name: str, message: Any, settings: Settings | None = None) -> None:
    """Publish one JSON message to a durable queue of that name, declaring the queue first."""
    settings = settings or load_settings()
    queue = _queue_named(queue_name, settings)
    with Connection(settings.broker_url, connect_timeout=settings.broker_connect_timeout) as connection:
        producer = connection.Producer(serializer="json")
        producer.publish(
            message,
            exchange="",
            routing_key=queue_name,
            declare=[queue],
            delivery_mode="persistent",
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )


class Dispatcher:
    """Sends ``provisioning.run_job`` with the payload ``{"job_id": ...}`` and the job id as task id.

    It uses a Celery app of its own built from ``celeryconfig``, so the API never imports the
    worker's code. The app (and its connection pool) is made on first use, after any fork.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._app: Celery | None = None

    @property
    def app(self) -> Celery:
        if self._app is None:
            app = Celery("provisioning-dispatch", set_as_current=False)
            app.conf.update(celeryconfig.build(self.settings))
            self._declare_queues(app)
            self._app = app
        return self._app

    def send_job(self, job_id: uuid.UUID) -> None:
        self.app.send_task(
            celeryconfig.RUN_JOB_TASK,
            kwargs={"job_id": str(job_id)},
            task_id=str(job_id),
            queue=self.settings.provisioning_queue_name,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )

    def _declare_queues(self, app: Celery) -> None:
        with app.connection_for_write() as connection:
            connection.ensure_connection(**PUBLISH_RETRY_POLICY)
            for queue in celeryconfig.provisioning_queues(self.settings):
                queue(connection.default_channel).declare()


def _queue_named(queue_name: str, settings: Settings) -> Queue:
    """The declared shape of our own queues, so publishing never redeclares them differently."""
    for queue in celeryconfig.provisioning_queues(settings):
        if queue.name == queue_name:
            return queue
    return Queue(queue_name, routing_key=queue_name, durable=True)
