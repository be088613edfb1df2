"""`provisioning dlq` facing dead letters it cannot read, and a broker it cannot reach."""

import uuid

from click.testing import CliRunner
from kombu import Connection

import celeryconfig
from provisioning.cli import main
from provisioning.messaging.dead_letters import QUEUE_HEADER, REASON_HEADER
from tests.job_messages import RawMessage, job_message
from tests.processes import free_port


def dlq(environment, *args: str):
    return CliRunner().invoke(main, ["dlq", *args], env=environment, catch_exceptions=False)


def test_a_dead_letter_that_cannot_be_expanded_is_listed_as_undecodable_and_the_others_still_list_and_replay(isolated):
    settings = isolated.settings
    garbage = {"compression": "application/x-gzip", REASON_HEADER: "cannot decode the body", QUEUE_HEADER: "elsewhere"}
    good = job_message(isolated.dispatcher.app)
    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        celeryconfig.declare_queues(channel, settings)
        # Both ways kombu fails on a garbage gzip body: zlib.error for bytes, TypeError for text.
        RawMessage(garbage, b"\x1f\x8b garbage", content_encoding="binary").publish(channel, settings.dead_letter_queue_name)
        RawMessage(garbage, b"garbage").publish(channel, settings.dead_letter_queue_name)
        good_letter = {**good.headers, REASON_HEADER: f"job {good.headers['id']} does not exist"}
        RawMessage(good_letter, good.body).publish(channel, settings.dead_letter_queue_name)

    listed = dlq(isolated.environment, "list")

    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert len(lines) == 3 and "3 dead letters" in listed.stderr
    assert all("(undecodable: compressed body (application/x-gzip) refused" in line for line in lines[:2]), lines
    assert lines[2].startswith(good.headers["id"]) and "does not exist" in lines[2]

    undecodable_id = lines[0].split("\t")[0]
    assert dlq(isolated.environment, "replay", good.headers["id"]).exit_code == 0
    assert dlq(isolated.environment, "replay", undecodable_id).exit_code == 0
    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        replayed = [channel.basic_get(queue=settings.provisioning_queue_name, no_ack=True) for _ in range(2)]
    assert replayed[0].headers["id"] == good.headers["id"] and REASON_HEADER not in replayed[0].headers
    # Sent back as it came, to the job queue whatever its header named, and still compressed.
    assert replayed[1].body == b"\x1f\x8b garbage" and replayed[1].headers["compression"] == "application/x-gzip"
    assert "1 dead letter" in dlq(isolated.environment, "list").stderr


def test_a_dead_letter_with_huge_headers_and_body_is_listed_on_one_short_line(isolated):
    """Headers must fit in one AMQP frame (128 kB); the body need not."""
    settings = isolated.settings
    headers = {"id": "i" * 30_000, "task": "t\n" * 1000, REASON_HEADER: "r" * 30_000, "x-death": 5}
    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        celeryconfig.declare_queues(channel, settings)
        RawMessage(headers, b"x" * 1_000_000).publish(channel, settings.dead_letter_queue_name)
        RawMessage({"x-death": "not a list"}, b"{}").publish(channel, settings.dead_letter_queue_name)

    listed = dlq(isolated.environment, "list")

    assert listed.exit_code == 0
    first, second = listed.stdout.splitlines()
    assert len(first) < 1200 and first.split("\t")[0] != "i" * 30_000
    assert second.split("\t")[2] == "unknown"


def test_the_dlq_commands_say_in_one_line_that_the_broker_cannot_be_reached_or_refuses_them(isolated):
    nowhere = {**isolated.environment, "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//"}
    refused = {**isolated.environment, "RABBITMQ_URL": "amqp://guest:wrong-password@127.0.0.1:5672//"}

    for environment, why in ((nowhere, "Connection refused"), (refused, "ACCESS_REFUSED")):
        for command in (["list"], ["replay", str(uuid.uuid4())], ["purge", "--yes"]):
            result = dlq(environment, *command)
            assert result.exit_code == 1, (command, result.output)
            (line,) = result.output.splitlines()
            assert line.startswith("Error: cannot use the broker at amqp://guest:**@127.0.0.1:") and why in line, line
            assert "wrong-password" not in line
