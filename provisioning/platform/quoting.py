"""Values shown in messages and log lines: short and on one line, whoever wrote them.

An identifier, a header or a body may come from anyone (an API client, a message on the queue, an
operator's paste): repeated whole, a megabyte of it would make a megabyte error message, log line
or AMQP header, and a newline in it a forged log line.
"""

from __future__ import annotations

import reprlib
from typing import Any

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 4
_short.maxlevel = 2


def quoted(value: Any) -> str:
    """A short repr of ``value`` (long strings and containers elided in the middle), on one line."""
    return shortened(_short.repr(value), 100)


def shortened(text: str, limit: int) -> str:
    """``text`` on one line (anything unprintable a space), cut to ``limit`` characters."""
    printable = "".join(character if character.isprintable() else " " for character in text[:limit])
    return printable if len(text) <= limit else printable[: limit - 3] + "..."


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a database driver's own one, when it wraps one): the
    rest of a driver's message is detail, or the SQL and its parameters."""
    text = str(getattr(error, "orig", None) or error).strip()
    return (text.splitlines() or [type(error).__name__])[0]
