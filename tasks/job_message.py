"""What a job message must look like before Celery's worker code may touch it.

Celery's strategy and request code trust a message's shape. A body of ``42``, a ``timelimit``
header of ``5`` or a missing ``id`` raises in the worker's main process, which exits, and the
message, never acknowledged, comes back first to every restart. Extra arguments, kwargs as a
list or ``embed`` of the wrong type fail later, in the pool, where Celery acknowledges the
message away; a message naming one of Celery's built-in tasks runs it; callbacks in ``embed``
(or in headers, which become the task's request) send tasks of the message's choosing.

So the consumer asks ``refusal(message)`` first, and dead-letters whatever it refuses. A job
message is exactly what ``provisioning.messaging.broker.Dispatcher`` and Celery's retry of our task send
(protocol 2, ``celery.app.amqp.AMQP.as_task_v2``): the task ``provisioning.run_job``, a UUID
task id, the body ``[[], {"job_id": "<uuid>"}, embed]`` with an ``embed`` that names no
workflow, and headers that leave the deployment's own limits and routing alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from celery.utils.time import maybe_iso8601
from kombu.message import Message

import celeryconfig
from provisioning.platform import identifiers
from provisioning.platform.quoting import quoted, shortened
from tasks import app

# An ETA holds the message unacknowledged in the worker until it is due; RabbitMQ closes the
# channel of a consumer that holds one past its consumer timeout (30 minutes) and redelivers
# it, so a far-off ETA would loop for ever. Ours come only from the retry of a job whose
# database was unreachable, at most a minute ahead: five leave room for clocks that disagree.
LATEST_ETA = timedelta(minutes=5)
# As long as Celery's own argsrepr: enough for any text header Celery or we write, short enough
# for a log line (Celery logs argsrepr and kwargsrepr as it receives a task).
MAX_TEXT_HEADER = 1024
# A job message's body is about 130 bytes; a larger one is not read at all (decoding it is the
# worker's main process's time and memory).
MAX_MESSAGE_BODY_BYTES = 64 * 1024
PAYLOAD = "payload must be exactly {'job_id': '<uuid>'}"
# Celery's send_task in a worker writes the task's limits, the deployment's own, into the
# message (our dead-letter copies have them); the dispatcher and Celery's retry write nulls.
OWN_TIME_LIMITS = [app.conf.task_time_limit, app.conf.task_soft_time_limit]
EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})


def refusal(message: Message) -> str | None:
    """Why ``message`` is not a job message this worker may run, or None when it is one.

    Never raises: a check that failed here would stop the worker just as Celery's code would.
    """
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return "not a task message (no task name in its headers)"
    return _headers_refusal(headers) or _body_refusal(message)


def _is_null(value: Any) -> bool:
    return value is None


def _is_text(value: Any) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= MAX_TEXT_HEADER)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0  # Celery adds 1 to it


def _is_near_eta(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str) or not value or len(value) > 64:  # Celery fails on an empty one
        return False
    try:
        eta = maybe_iso8601(value)  # Celery's own parser, so both read the same time
        if eta.tzinfo is None:  # Celery reads a naive ETA as UTC (the default)
            eta = eta.replace(tzinfo=timezone.utc)
        return eta <= datetime.now(timezone.utc) + LATEST_ETA
    except Exception:  # whatever the parser or the comparison makes of a hostile string
        return False


# Every header Celery's protocol 2 defines, what it may hold in a job message, and that in words.
# Anything else in a message's headers becomes part of the task's request (``self.request``) in
# the pool, ``callbacks`` included, so no other header is let through but ours and the broker's.
HEADERS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "task": (lambda value: value == celeryconfig.RUN_JOB_TASK, celeryconfig.RUN_JOB_TASK),
    "id": (identifiers.UUID.is_valid, identifiers.UUID.rule),
    "lang": (lambda value: value in (None, "py"), "'py'"),
    "shadow": (_is_null, "null"),
    "eta": (_is_near_eta, f"null or an ISO 8601 time at most {LATEST_ETA.seconds // 60} minutes ahead"),
    "expires": (_is_null, "null (a job's message never expires)"),
    "group": (_is_null, "null"),
    "group_index": (_is_null, "null"),
    "retries": (_is_count, "a count"),
    "timelimit": (
        lambda value: value in (None, [None, None], OWN_TIME_LIMITS),
        f"[null, null] or the deployment's own {OWN_TIME_LIMITS}",
    ),
    "root_id": (_is_text, "text"),
    "parent_id": (_is_text, "text"),
    "argsrepr": (_is_text, "text"),
    "kwargsrepr": (_is_text, "text"),
    "origin": (_is_text, "text"),
    "ignore_result": (lambda value: value is None or isinstance(value, bool), "a boolean"),
    "replaced_task_nesting": (_is_count, "a count"),
    "stamped_headers": (lambda value: value in (None, []), "empty"),
    "stamps": (lambda value: value in (None, {}), "empty"),
    # The API's rule for the X-Request-ID it binds and sends on.
    celeryconfig.REQUEST_ID_HEADER: (identifiers.REQUEST_ID.is_valid, identifiers.REQUEST_ID.rule),
}


def _headers_refusal(headers: dict) -> str | None:
    task = headers["task"]
    if task != celeryconfig.RUN_JOB_TASK:
        return f"unknown task {quoted(task)} (only {celeryconfig.RUN_JOB_TASK} runs from this queue)"
    if "id" not in headers:
        return "no task id in its headers"
    for name, value in headers.items():
        if isinstance(name, str) and name.startswith("x-"):  # the broker's (x-death) and ours (dead-letter reason)
            continue
        if name not in HEADERS:
            return f"unexpected header {quoted(name)}"
        check, expected = HEADERS[name]
        if not check(value):
            return f"header {name} must be {expected}, got {quoted(value)}"
    return None


def _body_refusal(message: Message) -> str | None:
    if len(message.body) > MAX_MESSAGE_BODY_BYTES:
        return f"body too large for a job message ({len(message.body)} > {MAX_MESSAGE_BODY_BYTES})"
    try:
        # Cached on the message: Celery's strategy reads this same decoded payload next.
        body = message.decode()
    except Exception as error:  # any failure to decode, whatever raised it, refuses the message
        return f"cannot decode the body ({message.content_type}, {message.content_encoding}): {shortened(str(error), 150)}"
    if not isinstance(body, list) or len(body) != 3:
        return f"body must be [args, kwargs, embed], got {quoted(body)}"
    args, kwargs, embed = body
    if args != []:
        return f"{PAYLOAD}, got positional arguments {quoted(args)}"
    if not isinstance(kwargs, dict) or set(kwargs) != {"job_id"}:
        return f"{PAYLOAD}, got {quoted(sorted(kwargs) if isinstance(kwargs, dict) else kwargs)}"
    if not identifiers.UUID.is_valid(kwargs["job_id"]):
        return f"job_id {quoted(kwargs['job_id'])} is not a UUID"
    if not isinstance(embed, dict) or not set(embed) <= EMBED_KEYS or any(value is not None for value in embed.values()):
        return f"embed must name no callbacks, errbacks, chain or chord (no workflow runs from this queue), got {quoted(embed)}"
    return None
