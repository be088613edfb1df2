"""One logging setup for every process (web, worker, beat, the command line): a JSON object per
line, or a readable line when the output is a terminal.

Lines about a job carry ``job_id``, ``tenant_id``, ``job_type`` and ``step``, and lines of one
request carry its ``request_id``, from a context bound with ``bound(...)``: the API binds the
request id, the Celery message carries it to the worker, and the worker binds it again with the
job's fields, so one search follows a request from the HTTP call to the worker's last write.
Bearer tokens and passwords in URLs are masked in every line, whatever logged them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator, TextIO

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

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("log_context", default={})


def bind(**fields: object) -> contextvars.Token:
    """Add ``fields`` (None values ignored) to every line logged from here in this thread or task,
    until ``unbind`` with the token returned; threads started meanwhile get them by running in
    ``contextvars.copy_context()``."""
    return _context.set({**_context.get(), **{name: str(value) for name, value in fields.items() if value is not None}})


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """``bind`` for the duration of a block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current(field: str) -> str | None:
    return _context.get().get(field)


def redact(text: str) -> str:
    for pattern, replacement in SECRETS:
        text = pattern.sub(replacement, text)
    return text


class ContextFilter(logging.Filter):
    """Puts the bound fields on each record, unless the call passed its own in ``extra``."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "process": self.role,
            "pid": record.process,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update({name: str(value) for name in CONTEXT_FIELDS if (value := getattr(record, name, None)) is not None})
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def __init__(self, role: str):
        super().__init__(f"%(asctime)s %(levelname)-7s {role} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{name}={value}" for name in CONTEXT_FIELDS if (value := getattr(record, name, None)) is not None)
        return redact(super().format(record) + (f"  [{fields}]" if fields else ""))


class StandardErrorHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def handler(role: str, log_format: str = "auto") -> logging.Handler:
    """A handler on standard error with the context filter and the format ``log_format`` asks for
    (``auto``: console on a terminal, JSON otherwise)."""
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    made = StandardErrorHandler()
    made.addFilter(ContextFilter())
    made.setFormatter(ConsoleFormatter(role) if log_format == "console" else JsonFormatter(role))
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
