"""The broker helper's JSON publishing, against the real RabbitMQ."""

import uuid
from unittest import mock

import pytest
from kombu import Connection

from provisioning.messaging.broker import Dispatcher, publish_json
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from tests.stack import delete_queues


def test_publish_json_declares_a_durable_queue_and_delivers_the_message_as_json(settings):
    queue_name = f"{settings.provisioning_queue_name}.publish-json-{uuid.uuid4().hex[:6]}"
    message = {"event": "job.completed", "job_id": str(uuid.uuid4()), "progress": 100}
    try:
        publish_json(queue_name, message, settings)

        with Connection(settings.broker_url) as connection:
            received = connection.SimpleQueue(queue_name).get(timeout=5)
            received.ack()
            assert received.content_type == "application/json"
            assert received.decode() == message
            assert received.properties["delivery_mode"] == 2  # persistent
            _name, waiting, _consumers = connection.default_channel.queue_declare(queue_name, passive=True)
            assert waiting == 0
    finally:
        delete_queues(queue_name)


def test_publish_json_declares_a_job_queue_as_the_dispatcher_does(settings):
    """RabbitMQ refuses to redeclare a queue with other arguments: both must agree on the dead-letter ones."""
    queue_settings = settings.model_copy(
        update={"provisioning_queue_name": f"{settings.provisioning_queue_name}.shape-{uuid.uuid4().hex[:6]}"}
    )
    try:
        publish_json(queue_settings.provisioning_queue_name, {"hello": "queue"}, queue_settings)
        Dispatcher(queue_settings).send_job(uuid.uuid4(), DEFAULT_SERVER_NAME)

        with Connection(settings.broker_url) as connection:
            _name, waiting, _consumers = connection.default_channel.queue_declare(
                queue_settings.provisioning_queue_name, passive=True
            )
        assert waiting == 2
    finally:
        delete_queues(queue_settings.provisioning_queue_name)


@pytest.fixture
def own_queues(settings):
    """Settings whose job queue (and its dead-letter queue) no one has declared yet; removed afterwards."""
    own = settings.model_copy(
        update={"provisioning_queue_name": f"{settings.provisioning_queue_name}.own-{uuid.uuid4().hex[:6]}"}
    )
    yield own
    delete_queues(own.provisioning_queue_name)


def waiting(settings) -> list[int]:
    """Messages in the job queue and in its dead-letter queue (an error if either does not exist)."""
    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        return [channel.queue_declare(name, passive=True).message_count
                for name in (settings.provisioning_queue_name, settings.dead_letter_queue_name)]  # fmt: skip


def test_a_dispatchers_first_message_finds_both_queues_declared(own_queues):
    """RabbitMQ confirms a message that no queue takes, and drops it: the queues must exist first."""
    dispatcher = Dispatcher(own_queues)
    dispatcher.send_job(uuid.uuid4(), DEFAULT_SERVER_NAME)
    dispatcher.send_job(uuid.uuid4(), DEFAULT_SERVER_NAME)

    assert waiting(own_queues) == [2, 0]


def test_after_a_failed_publish_the_dispatcher_declares_its_queues_again(own_queues, monkeypatch):
    """A broker that failed may come back without our queues (a new node): the next publish declares them."""
    dispatcher = Dispatcher(own_queues, pause_after_failure=0)
    dispatcher.send_job(uuid.uuid4(), DEFAULT_SERVER_NAME)
    delete_queues(own_queues.provisioning_queue_name)  # as a broker that came back empty would have them
    send_task = dispatcher.app.send_task
    monkeypatch.setattr(dispatcher.app, "send_task", mock.Mock(side_effect=ConnectionResetError("the broker went away")))
    with pytest.raises(ConnectionResetError):
        dispatcher.send_job(uuid.uuid4(), DEFAULT_SERVER_NAME)
    monkeypatch.setattr(dispatcher.app, "send_task", send_task)

    dispatcher.send_job(uuid.uuid4(), DEFAULT_SERVER_NAME)

    assert waiting(own_queues) == [1, 0]
