"""One logging setup for every process (web, worker, sweeper, the command line): a JSON object per
line, or a readable line when the output is a terminal.

Lines about a job carry ``job_id``, ``tenant_id``, ``job_type`` and ``step``, and lines of one
request carry its ``request_id``, from a context bound with ``bound(...)``: the API binds the
request id, the Celery message carries it to the worker, and the worker binds it again with the
job's fields, so one search follows a request from the HTTP call to the worker's last write.
Bearer tokens and passwords in URLs are masked in every line, whatever logged them.

The modules log through the standard library (``logging.getLogger(__name__)``), as Celery,
gunicorn and Flower do; structlog's ``ProcessorFormatter`` turns each record into the line, and
its context variables hold the bound fields.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, TextIO

import structlog
from structlog.contextvars import bind_contextvars, get_contextvars, merge_contextvars, reset_contextvars
from structlog.typing import EventDict, Processor, WrappedLogger

CONTEXT_FIELDS = ("request_id", "job_id", "tenant_id", "job_type", "step")
MASK = "***"
SECRETS = (
    (re.compile(r"erpx_[A-Za-z0-9_-]{6,}"), "erpx_" + MASK),  # our API tokens
    (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), r"\g<1>" + MASK),
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\g<1>" + MASK + "@"),  # amqp://user:password@host
)

# Loggers that say nothing an operator needs at their usual levels: Alembic's INFO lines (its
# plugins at every start, the migration context at every readiness check), and Flower's
# inspector, which warns "Inspect method ... failed" whenever no worker answers yet (Flower
# starting before the worker); its errors still show.
QUIETER = {"alembic": logging.WARNING, "flower.inspector": logging.ERROR}


def bind(**fields: object) -> Mapping[str, contextvars.Token]:
    """Add ``fields`` (None values ignored) to every line logged from here in this thread or task,
    until ``unbind`` with the tokens returned; threads started meanwhile get them by running in
    ``contextvars.copy_context()``."""
    return bind_contextvars(**{name: str(value) for name, value in fields.items() if value is not None})


def unbind(tokens: Mapping[str, contextvars.Token]) -> None:
    reset_contextvars(**tokens)


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """``bind`` for the duration of a block."""
    tokens = bind(**fields)
    try:
        yield
    finally:
        unbind(tokens)


def current(field: str) -> str | None:
    return get_contextvars().get(field)


def redact(text: str) -> str:
    for pattern, replacement in SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _redact_secrets(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    return {name: redact(value) if isinstance(value, str) else value for name, value in event.items()}


def _line_of(role: str) -> Processor:
    """The fields of every line, in their order: the record's time, level, process and logger, its
    message, then the job and request fields (a call's own ``extra`` wins over the bound ones)."""

    def shape(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
        record: logging.LogRecord = event.pop("_record")
        event.pop("_from_structlog", None)
        return {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "process": role,
            "pid": record.process,
            "logger": record.name,
            "message": event.pop("event"),
            **{name: str(event.pop(name)) for name in CONTEXT_FIELDS if event.get(name) is not None},
            **event,
        }

    return shape


def _console_line(_logger: WrappedLogger, _method: str, event: EventDict) -> str:
    fields = " ".join(f"{name}={event[name]}" for name in CONTEXT_FIELDS if name in event)
    line = f"{event['time']} {event['level'].upper():<7} {event['process']} {event['logger']}: {event['message']}"
    line += f"  [{fields}]" if fields else ""
    return line + (f"\n{event['exception']}" if "exception" in event else "")


class StandardErrorHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def handler(role: str, log_format: str = "auto") -> logging.Handler:
    """A handler on standard error in the format ``log_format`` asks for (``auto``: console on a
    terminal, JSON otherwise)."""
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    made = StandardErrorHandler()
    made.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                merge_contextvars,
                structlog.stdlib.ExtraAdder(allow=CONTEXT_FIELDS),
                structlog.processors.format_exc_info,
                _line_of(role),
                _redact_secrets,
                _console_line if log_format == "console" else structlog.processors.JSONRenderer(ensure_ascii=False),
            ]
        )
    )
    made.set_name(f"provisioning-{role}")
    return made


def configure(role: str, log_format: str = "auto", level: str = "INFO") -> None:
    """Send every logger's lines (Celery's and gunicorn's included) through one handler of ours.

    Other handlers on the root logger (a test runner's capture, say) are left in place; a second
    call changes nothing.
    """
    root = logging.getLogger()
    if not any((existing.get_name() or "").startswith("provisioning-") for existing in root.handlers):
        root.addHandler(handler(role, log_format))
    root.setLevel(level)
    logging.captureWarnings(True)  # Python's warnings (Celery's about running as root, say) too
    for name in ("gunicorn.error", "gunicorn.access", "celery", "celery.task", "celery.redirected"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name, quieter in QUIETER.items():
        logging.getLogger(name).setLevel(max(quieter, logging.getLevelName(level)))
