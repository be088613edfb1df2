"""Job messages for tests: one exactly as the dispatcher sends it, and poison made from it."""

from __future__ import annotations

import gzip
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable

from celery import Celery
from kombu import Message
from kombu.serialization import prepare_accept_content

from celeryconfig import RUN_JOB_TASK


@dataclass(frozen=True)
class RawMessage:
    """A task message as it travels: headers, the body's bytes and their content type and encoding."""

    headers: dict
    body: bytes
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"

    def publish(self, channel, queue_name: str) -> None:
        """Publish exactly these bytes and properties (kombu's producer would serialize some bodies
        itself, and cannot send a message without a content type)."""
        prepared = channel.prepare_message(self.body, None, self.content_type, self.content_encoding, self.headers)
        channel.basic_publish(prepared, exchange="", routing_key=queue_name)

    def received(self) -> Message:
        """The message as kombu hands it to the worker's consumer, which accepts JSON only."""
        return Message(
            body=self.body,
            headers=self.headers,
            content_type=self.content_type,
            content_encoding=self.content_encoding,
            accept=prepare_accept_content(["json"]),
        )


def job_message(app: Celery, job_id: uuid.UUID | None = None, **options: Any) -> RawMessage:
    """``provisioning.run_job`` for ``job_id`` as Celery's ``send_task`` builds it (``options`` as
    ``send_task`` takes them: ``countdown``, ``retries``...)."""
    job_id = str(job_id or uuid.uuid4())
    task = app.amqp.as_task_v2(job_id, RUN_JOB_TASK, kwargs={"job_id": job_id}, **options)
    return RawMessage(dict(task.headers), json.dumps(task.body).encode())


def _headers(**changes: Any) -> Callable[[RawMessage], RawMessage]:
    return lambda message: replace(message, headers={**message.headers, **changes})


def _without(name: str) -> Callable[[RawMessage], RawMessage]:
    return lambda message: replace(message, headers={key: value for key, value in message.headers.items() if key != name})


def _body(value: Any) -> Callable[[RawMessage], RawMessage]:
    return lambda message: replace(message, body=json.dumps(value).encode())


ARGS, KWARGS, EMBED = range(3)


def _part(index: int, value: Any) -> Callable[[RawMessage], RawMessage]:
    """The message's own body ``[args, kwargs, embed]`` with one part replaced by ``value``."""

    def mutate(message: RawMessage) -> RawMessage:
        parts = json.loads(message.body)
        parts[index] = value
        return replace(message, body=json.dumps(parts).encode())

    return mutate


def _raw(body: bytes, **properties: Any) -> Callable[[RawMessage], RawMessage]:
    return lambda message: replace(message, body=body, **properties)


def _protocol_1(message: RawMessage) -> RawMessage:
    args, kwargs, _embed = json.loads(message.body)
    body = {"task": RUN_JOB_TASK, "id": message.headers["id"], "args": args, "kwargs": kwargs}
    return RawMessage({}, json.dumps(body).encode())


def _gzip_header(body: bytes) -> Callable[[RawMessage], RawMessage]:
    return lambda message: replace(message, body=body, headers={**message.headers, "compression": "application/x-gzip"})


def _gzipped(message: RawMessage) -> RawMessage:
    return _gzip_header(gzip.compress(message.body))(message)


TIMELIMIT = "header timelimit must be [null, null] or the deployment's own"
A_CALLBACK = {"task": "celery.accumulate", "args": [], "kwargs": {}, "options": {}, "subtask_type": None, "immutable": True}

# (what is wrong, how to make it from a good message, what its dead letter's reason says)
POISON: list[tuple[str, Callable[[RawMessage], RawMessage], str]] = [
    ("a body of 42", _body(42), "body must be [args, kwargs, embed], got 42"),
    ("a body of null", _body(None), "body must be [args, kwargs, embed], got None"),
    ("a body of [1]", _body([1]), "body must be [args, kwargs, embed], got [1]"),
    ("a body of four items", _body([[], {"job_id": str(uuid.uuid4())}, {}, {}]), "body must be [args, kwargs, embed]"),
    ("a JSON string body", _body("run it"), "body must be [args, kwargs, embed], got 'run it'"),
    ("a protocol-1 body", _protocol_1, "not a task message"),
    ("a hybrid body", _body({"args": [], "kwargs": {"job_id": str(uuid.uuid4())}}), "body must be [args, kwargs, embed]"),
    ("an extra positional argument", _part(ARGS, ["extra"]), "got positional arguments ['extra']"),
    ("args not a list", _part(ARGS, 5), "got positional arguments 5"),
    ("kwargs as a list", _part(KWARGS, [["job_id", "x"]]), "payload must be exactly"),
    ("an extra keyword", _part(KWARGS, {"job_id": str(uuid.uuid4()), "site": "x"}), "got ['job_id', 'site']"),
    ("no job_id", _part(KWARGS, {}), "payload must be exactly {'job_id': '<uuid>'}, got []"),
    ("a job_id that is not a UUID", _part(KWARGS, {"job_id": "not-a-uuid"}), "job_id 'not-a-uuid' is not a UUID"),
    ("a job_id that is a number", _part(KWARGS, {"job_id": 42}), "job_id 42 is not a UUID"),
    ("a 60 kB job_id", _part(KWARGS, {"job_id": "x" * 60_000}), "job_id 'xxxxxxxx"),
    ("a 1 MB job_id", _part(KWARGS, {"job_id": "x" * 1_000_000}), "body too large for a job message"),
    ("embed not a dict", _part(EMBED, 5), "embed must name no callbacks"),
    ("a callback in embed", _part(EMBED, {"callbacks": [A_CALLBACK]}), "embed must name no callbacks"),
    ("a chain in embed", _part(EMBED, {"chain": [A_CALLBACK]}), "embed must name no callbacks"),
    ("another key in embed", _part(EMBED, {"hostname": "elsewhere"}), "embed must name no callbacks"),
    ("a body that is not JSON", _raw(b'{"job_id": '), "cannot decode the body"),
    ("a body that is not UTF-8", _raw(b"\xff\xfe[[]"), "cannot decode the body"),
    ("JSON nested 30,000 deep", _raw(b"[" * 30_000 + b"]" * 30_000), "cannot decode the body"),
    ("a pickled body", _raw(b"\x80\x04K*.", content_type="application/x-python-serialize"), "cannot decode the body"),
    ("a text/plain body", _raw(b"run it", content_type="text/plain"), "cannot decode the body"),
    ("no content type", lambda message: replace(message, content_type=None, content_encoding=None), "body must be"),
    ("Celery's accumulate task", _headers(task="celery.accumulate"), "unknown task 'celery.accumulate'"),
    ("a task nobody has", _headers(task="provisioning.no_such_task"), "unknown task 'provisioning.no_such_task'"),
    ("a task name that is a number", _headers(task=5), "unknown task 5"),
    ("no id header", _without("id"), "no task id in its headers"),
    ("an id that is a number", _headers(id=5), "header id must be a UUID, got 5"),
    ("an id of 1 kB", _headers(id="i" * 1000), "header id must be a UUID"),
    ("a timelimit of ['x', 'y']", _headers(timelimit=["x", "y"]), TIMELIMIT),
    ("a timelimit of 5", _headers(timelimit=5), TIMELIMIT),
    ("a timelimit above the deployment's", _headers(timelimit=[86400, 86000]), TIMELIMIT),
    ("an eta that is not a time", _headers(eta="tomorrow"), "header eta must be"),
    ("an eta that is a number", _headers(eta=5), "header eta must be"),
    ("an eta a year ahead", _headers(eta="2999-01-01T00:00:00+00:00"), "at most 5 minutes ahead"),
    ("an expiry in the past", _headers(expires="2000-01-01T00:00:00+00:00"), "header expires must be null"),
    ("negative retries", _headers(retries=-1), "header retries must be a count"),
    ("retries as text", _headers(retries="1"), "header retries must be a count"),
    ("retries of null", _headers(retries=None), "header retries must be a count"),
    ("a shadow name", _headers(shadow="provisioning.other"), "header shadow must be null"),
    ("a group", _headers(group=str(uuid.uuid4())), "header group must be null"),
    ("stamped headers of 5", _headers(stamped_headers=5), "header stamped_headers must be empty"),
    ("an argsrepr that is a number", _headers(argsrepr=5), "header argsrepr must be text"),
    ("an argsrepr of 2 kB", _headers(argsrepr="a" * 2000), "header argsrepr must be text"),
    ("a root_id that is a list", _headers(root_id=[1]), "header root_id must be text"),
    ("another language", _headers(lang="js"), "header lang must be 'py'"),
    ("ignore_result as text", _headers(ignore_result="no"), "header ignore_result must be a boolean"),
    ("callbacks as a header", _headers(callbacks=[A_CALLBACK]), "unexpected header 'callbacks'"),
    ("a request id with a newline", _headers(request_id="portal-1\nforged log line"), "header request_id must be"),
    ("a request id of 1 kB", _headers(request_id="r" * 1000), "header request_id must be"),
    ("another header", _headers(priority_boost=1), "unexpected header 'priority_boost'"),
]

# kombu expands a compressed body as it receives the message, before the consumer sees it: these
# are refused there (provisioning.messaging.broker.refuse_compressed_bodies), so only a real worker sees them.
COMPRESSED_POISON: list[tuple[str, Callable[[RawMessage], RawMessage], str]] = [
    ("a gzip body that is garbage", _gzip_header(b"garbage"), "compressed body (application/x-gzip) refused"),
    ("a gzipped job message", _gzipped, "compressed body (application/x-gzip) refused"),
]
