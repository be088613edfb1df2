"""The shape check every task message passes before Celery's worker code touches it."""

import inspect
import json
import uuid
from dataclasses import replace

import pytest
from celery.worker.request import Request
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.asynchronous.timer import to_timestamp

from celeryconfig import REQUEST_ID_HEADER, RUN_JOB_TASK
from provisioning.messaging.broker import Dispatcher
from provisioning.messaging.dead_letters import MAX_REASON_LENGTH
from provisioning.platform.settings import load_settings
from tasks import app as worker_app
from tasks.job_message import HEADERS, refusal
from tasks.jobs import MAX_DATABASE_RETRY_SECONDS, database_retry_delay
from tests.job_messages import POISON, RawMessage, job_message

DISPATCHER_APP = Dispatcher(load_settings({})).app


def test_a_job_message_as_the_dispatcher_sends_it_passes():
    message = job_message(DISPATCHER_APP)

    assert refusal(message.received()) is None
    assert refusal(replace(message, headers={**message.headers, REQUEST_ID_HEADER: "portal-7f3a"}).received()) is None


def test_a_job_message_as_celery_sends_it_again_after_a_database_outage_passes():
    first = job_message(DISPATCHER_APP)
    retried = job_message(
        DISPATCHER_APP,
        uuid.UUID(first.headers["id"]),
        countdown=MAX_DATABASE_RETRY_SECONDS,
        retries=7,
        root_id=first.headers["id"],
        parent_id=first.headers["id"],
    )

    assert retried.headers["eta"] is not None
    assert refusal(retried.received()) is None


def test_a_job_message_a_worker_sends_itself_with_the_deployments_time_limits_passes():
    """Celery's send_task in a worker (our dead-letter copy) writes the task's limits into the message."""
    limits = {"time_limit": worker_app.conf.task_time_limit, "soft_time_limit": worker_app.conf.task_soft_time_limit}
    message = job_message(DISPATCHER_APP, **limits)

    assert refusal(message.received()) is None


@pytest.mark.parametrize(("poison", "reason"), [(make, reason) for _name, make, reason in POISON], ids=[p[0] for p in POISON])
def test_a_malformed_message_is_refused_with_a_reason_that_says_what_is_wrong(poison, reason):
    refused = refusal(poison(job_message(DISPATCHER_APP)).received())

    assert refused is not None and reason in refused, refused
    assert len(refused) <= MAX_REASON_LENGTH


def refused_or_runnable(raw: RawMessage) -> str | None:
    """The check's answer; and when it lets the message through, proof that Celery's worker code,
    which a malformed message broke before, builds its request and can call the task with it."""
    message = raw.received()
    refused = refusal(message)
    if refused is None:
        request = Request(message, app=worker_app, task=worker_app.tasks[RUN_JOB_TASK], hostname="test@localhost")
        hard_limit, soft_limit = request.time_limits
        database_retry_delay(request.request_dict.get("retries", 0) + 1)  # the task's retry, and Celery's
        if request.eta:
            to_timestamp(request.eta)
        args, kwargs, embed = message.payload
        inspect.signature(worker_app.tasks[RUN_JOB_TASK].run).bind(*args, **kwargs)
        assert all(value is None for value in embed.values())
    else:
        assert isinstance(refused, str) and refused
    return refused


EDGE_VALUES = [
    None, "", "x", "py", "2026-12-04", "2026-12-04T10:00:00+00:00", "9999-12-31T23:59:59-23:59", str(uuid.uuid4()),
    "y" * 2000, 0, -1, 2**62, True, 1.5, float("inf"), [], {}, [None, None], [1, 2], ["x", "y"], [None], {"job_id": None},
]  # fmt: skip


@pytest.mark.parametrize("name", [*HEADERS, "x-death", "callbacks", "hostname"])
def test_any_header_set_to_any_edge_value_is_refused_or_runs_in_celery(name):
    good = job_message(DISPATCHER_APP)
    for value in EDGE_VALUES:
        refused_or_runnable(replace(good, headers={**good.headers, name: value}))


def test_any_part_of_the_body_or_the_whole_set_to_any_edge_value_is_refused_or_runs_in_celery():
    good = job_message(DISPATCHER_APP)
    for value in EDGE_VALUES:
        refused_or_runnable(replace(good, body=json.dumps(value).encode()))
        for index in range(3):
            parts = json.loads(good.body)
            parts[index] = value
            refused_or_runnable(replace(good, body=json.dumps(parts).encode()))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
HEADER_NAMES = st.sampled_from([*HEADERS, "x-death", "callbacks", "hostname"]) | st.text(max_size=12)


@st.composite
def mutated_job_messages(draw) -> RawMessage:
    """A good job message with some headers replaced, added or removed, and its body, one part
    of it, or its bytes replaced."""
    message = job_message(DISPATCHER_APP)
    removed = draw(st.sets(st.sampled_from(sorted(message.headers)), max_size=2))
    headers = {name: value for name, value in message.headers.items() if name not in removed}
    headers.update(draw(st.dictionaries(HEADER_NAMES, JSON, max_size=3)))
    body = json.loads(message.body)
    kind = draw(st.sampled_from(["unchanged", "part", "whole", "bytes"]))
    if kind == "part":
        body[draw(st.integers(0, 2))] = draw(JSON)
    encoded = draw(st.binary(max_size=64)) if kind == "bytes" else json.dumps(draw(JSON) if kind == "whole" else body).encode()
    return RawMessage(headers, encoded)


@settings(max_examples=300)
@given(mutated_job_messages())
def test_whatever_a_message_holds_the_check_never_raises_and_what_it_passes_celery_runs(raw):
    refused_or_runnable(raw)


def test_a_message_claiming_billions_of_retries_waits_a_minute_before_the_next_try():
    assert [database_retry_delay(retries) for retries in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert database_retry_delay(2**62) == MAX_DATABASE_RETRY_SECONDS
