"""Celery's consumer, except that no message it cannot handle stops it, is dropped, or loops.

Stock Celery trusts a task message's shape (a malformed one can stop the worker for good),
acknowledges (drops) a body it cannot decode and rejects unknown messages without a word of
why. Here every message is first checked against the one shape a job message has
(``tasks.job_message``); whatever fails goes to the dead-letter queue with its reason, and the
worker goes on.
"""

import logging

from celery.worker.consumer import Consumer
from vine import promise

from provisioning.messaging.broker import refuse_compressed_bodies
from provisioning.messaging.dead_letters import MAX_REASON_LENGTH, dead_letter, message_id
from provisioning.platform.quoting import shortened
from tasks import job_message
from tasks.jobs import worker_settings

log = logging.getLogger(__name__)


class DeadLetteringConsumer(Consumer):
    def __init__(self, *args, **kwargs):
        # Before the first message arrives: kombu would otherwise expand a compressed body, however
        # large it grows, before on_task_received could refuse it.
        refuse_compressed_bodies()
        super().__init__(*args, **kwargs)

    def create_task_handler(self, promise=promise):
        """Celery's handler of each task message, behind ``job_message.refusal``."""
        handle = super().create_task_handler(promise)

        def on_task_received(message):
            refusal = job_message.refusal(message)
            if refusal is not None:
                return self._dead_letter(message, refusal)
            return handle(message)

        return on_task_received

    def on_decode_error(self, message, exc):
        """kombu could not read the message (a compressed body, refused), before any shape check."""
        self._dead_letter(message, f"cannot decode the body ({message.content_type}, {message.content_encoding}): {exc}")

    def on_invalid_task(self, body, message, exc):
        """Celery refused a message that passed the shape check; kept with the reason all the same."""
        self._dead_letter(message, f"invalid task message: {exc}")

    def _dead_letter(self, message, reason: str) -> None:
        """Copy the message to the dead-letter queue with ``reason``, then acknowledge it.

        If the copy cannot be published (a header too big for a frame, the broker refusing it),
        the message is rejected instead: the job queue's own dead-letter exchange then keeps it,
        without the reason, rather than the exception stopping the worker. A broken connection
        makes the rejection fail too; Celery then reconnects and the message comes again. The
        embedded broker (Redis) has no dead-letter exchange: there the rejected message is gone,
        and only the log line, with its id, says what it was.
        """
        reason = shortened(reason, MAX_REASON_LENGTH)
        log.error("dead-lettering a message: %s", reason)
        try:
            with self.app.producer_or_acquire() as producer:
                dead_letter(producer, message, reason, worker_settings())
        except Exception:
            if worker_settings().embedded:
                log.exception("the dead-letter copy failed; message %s is dropped (no dead-lettering here)", message_id(message))
            else:
                log.exception("the dead-letter copy failed; rejecting the message into the dead-letter queue instead")
            message.reject(requeue=False)
            return
        message.ack()
