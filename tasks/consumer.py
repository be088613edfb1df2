"""Celery's consumer, except that no message it cannot handle is dropped or looped on.

Stock Celery acknowledges (drops) a body it cannot decode and rejects unknown messages without a
word of why; here each goes to the dead-letter queue with its reason, and the worker goes on.
"""

import logging

from celery.worker.consumer import Consumer

from provisioning.dead_letters import dead_letter
from tasks.jobs import worker_settings

log = logging.getLogger(__name__)


class DeadLetteringConsumer(Consumer):
    def on_decode_error(self, message, exc):
        self._dead_letter(message, f"cannot decode the body ({message.content_type}, {message.content_encoding}): {exc}")

    def on_unknown_message(self, body, message):
        self._dead_letter(message, "not a task message (no task name in its headers)")

    def on_unknown_task(self, body, message, exc):
        self._dead_letter(message, f"unknown task {message.headers.get('task')!r}")

    def on_invalid_task(self, body, message, exc):
        self._dead_letter(message, f"invalid task message: {exc}")

    def _dead_letter(self, message, reason: str) -> None:
        log.error("dead-lettering a message: %s", reason)
        with self.app.producer_or_acquire() as producer:
            dead_letter(producer, message, reason, worker_settings())
        message.ack()
