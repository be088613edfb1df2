"""What the accounts' writes share: a text field's checks, a unique name's conflict."""

from __future__ import annotations

import re

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provisioning.errors import Conflict, InvalidRequest
from provisioning.platform.identifiers import Identifier
from provisioning.platform.quoting import quoted

# Names go into listings, log lines and the audit trail, one to a line: no control character (a
# newline, a tab...) nor line separator. The same patterns are in the OpenAPI document, so a
# client knows beforehand what is refused (ECMA-262 reads them as Python does).
_NOT_IN_A_LINE = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
ONE_LINE = Identifier(re.compile(f"^[^{_NOT_IN_A_LINE}]*$"), "one line of text, with no control characters")
# ...and not blank: at least one character that is not a space of any kind (Python's isspace()).
_SPACES = r"\x20\xa0\u1680\u2000-\u200a\u202f\u205f\u3000"
ONE_LINE_NOT_BLANK = Identifier(
    re.compile(f"^[^{_NOT_IN_A_LINE}]*[^{_NOT_IN_A_LINE}{_SPACES}][^{_NOT_IN_A_LINE}]*$"),
    "one line of text, not blank, with no control characters",
)


def text(what: str, value: str, max_length: int) -> str:
    """``value`` stripped; InvalidRequest if it is longer than its column or holds control
    characters (a newline or tab would break every listing that shows it)."""
    value = value.strip()
    if len(value) > max_length:
        raise InvalidRequest(f"{what} is {len(value)} characters long; at most {max_length} are allowed")
    if not ONE_LINE.is_valid(value):
        raise InvalidRequest(f"{what} {quoted(value)} has control characters (a newline, a tab...)")
    return value


def flush_unique(session: Session, message: str) -> None:
    """Write what was added so far (rows others point at go first); a taken name is a Conflict."""
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(message) from None
