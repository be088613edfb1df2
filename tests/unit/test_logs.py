"""The one log format: JSON lines with the bound job and request fields, secrets masked."""

import json
import logging

import pytest

from provisioning.platform import logs


@pytest.fixture
def lines(capsys):
    """Log through a handler of ours in JSON, and read back what it wrote, one dict per line."""
    logger = logging.getLogger("test.logs")
    handler = logs.handler("test", "json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    def read() -> list[dict]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines()]

    yield logger, read
    logger.removeHandler(handler)


def test_a_line_is_one_json_object_with_the_fields_bound_around_it(lines):
    logger, read = lines
    with logs.bound(request_id="req-1", job_id="job-1"):
        with logs.bound(step="create_site", tenant_id=None):
            logger.info("step %s started", "create_site")
        logger.warning("after the step")
    logger.info("outside")

    first, second, third = read()
    assert first["message"] == "step create_site started" and first["level"] == "info" and first["process"] == "test"
    assert (first["request_id"], first["job_id"], first["step"]) == ("req-1", "job-1", "create_site")
    assert "tenant_id" not in first  # None is not bound
    assert "step" not in second and second["job_id"] == "job-1"
    assert not {"request_id", "job_id"} & set(third)


def test_tokens_and_passwords_in_urls_are_masked_in_messages_and_tracebacks(lines):
    logger, read = lines
    try:
        raise RuntimeError("could not reach amqp://guest:s3cret@broker:5672//")
    except RuntimeError:
        logger.exception("request with Authorization: Bearer erpx_AbCdEf0123456789 failed")

    [line] = read()
    text = json.dumps(line)
    assert "erpx_AbCdEf0123456789" not in text and "s3cret" not in text
    assert "amqp://guest:***@broker" in line["exception"]


def test_the_console_format_is_one_readable_line_with_the_fields_at_the_end(capsys):
    logger = logging.getLogger("test.console")
    handler = logs.handler("worker", "console")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with logs.bound(job_id="job-9"):
            logger.error("it broke")
    finally:
        logger.removeHandler(handler)
    [line] = capsys.readouterr().err.splitlines()
    assert " ERROR " in line and "worker test.console: it broke" in line and line.endswith("[job_id=job-9]")


def test_a_configured_process_shows_no_alembic_chatter_nor_flowers_warning_that_no_worker_answered_yet(capsys):
    logs.configure("web", "json", "INFO")
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
    logging.getLogger("alembic.runtime.migration").info("Context impl PostgresqlImpl.")
    logging.getLogger("flower.inspector").warning("Inspect method %s failed", "stats")
    logging.getLogger("alembic.runtime.migration").warning("a real problem")
    logging.getLogger("flower.inspector").error("Inspect method %s failed: %s", "stats", "connection refused")

    messages = [json.loads(line)["message"] for line in capsys.readouterr().err.splitlines()]
    assert messages == ["a real problem", "Inspect method stats failed: connection refused"]
