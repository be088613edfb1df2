"""What each kind of identifier looks like, said once; a value is valid only if its pattern matches all of it.

``re.match`` with ``^...$`` lets a trailing newline through (``$`` also matches just before a final
``\\n``), and so does marshmallow's ``validate.Regexp``, which calls ``match``: a slug ``"acme\\n"``
was accepted and went on into the site name, bench's arguments and file paths. Every check here is
a ``fullmatch``, which no trailing character survives. The patterns keep their ``^...$`` anchors so
that the same text, published in the OpenAPI document, means the same to a JSON Schema validator
(ECMA-262, where ``$`` is the very end).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provisioning.platform.quoting import quoted

# One DNS label: letters and digits, hyphens inside, at most 63 characters.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"


@dataclass(frozen=True)
class Identifier:
    """A kind of identifier: its pattern and, for error messages, what a valid one looks like."""

    pattern: re.Pattern[str]
    rule: str

    def is_valid(self, value: object) -> bool:
        return isinstance(value, str) and self.pattern.fullmatch(value) is not None and _encodable(value)

    def problem(self, name: str, value: object) -> str | None:
        """Why ``value`` is not a valid ``name``, in a sentence that quotes it; None when it is valid."""
        return None if self.is_valid(value) else f"{name} {quoted(value)} must be {self.rule}"


def _encodable(value: str) -> bool:
    """Whether the value can be written as UTF-8: JSON's ``"\\ud800"`` decodes to a lone surrogate,
    which no pattern here refuses and no database, log or header can hold."""
    return value.isascii() or not any("\ud800" <= character <= "\udfff" for character in value)


def _kind(pattern: str, rule: str) -> Identifier:
    return Identifier(re.compile(pattern), rule)


# A tenant's slug: the first label of its site's name, so a DNS label.
SLUG = _kind(f"^{_LABEL}$", "lowercase letters, digits and inner hyphens (1 to 63 characters)")
# Printable, one @, a dot in the domain; anything stricter refuses real addresses. The C1 controls
# and the BOM are named as well as \s: Python's \s holds \x85 and ECMA-262's \ufeff, and the spec's
# readers must refuse what we refuse.
_NOT_IN_AN_ADDRESS = r"[^@\s\x00-\x1f\x7f-\x9f\ufeff]+"
EMAIL = _kind(f"^{_NOT_IN_AN_ADDRESS}@{_NOT_IN_AN_ADDRESS}\\.{_NOT_IN_AN_ADDRESS}$", "an e-mail address (name@domain.tld)")
# A site's name, <slug>.<SITE_DOMAIN>: a domain name of two labels or more, 253 characters at most.
SITE_NAME = _kind(f"^(?=.{{1,253}}$){_LABEL}(?:\\.{_LABEL})+$", "a domain name of lowercase labels")
# A Frappe app: a Python package name, and a folder under the bench's apps/.
APP_NAME = _kind(r"^[a-z][a-z0-9_]{0,99}$", "a Frappe app name (lowercase letters, digits and underscores)")
# What can go into a log field and back into a header without quoting or surprises.
REQUEST_ID = _kind(r"^[A-Za-z0-9._:-]{1,128}$", "1 to 128 of A-Z a-z 0-9 . _ : -")
IDEMPOTENCY_KEY = _kind(r"^[\x21-\x7e]{1,255}$", "1 to 255 visible ASCII characters")
# A UUID as the API writes them (8-4-4-4-12 hex digits), not every spelling uuid.UUID() accepts.
UUID = _kind(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", "a UUID")
# A RabbitMQ queue name that <name>.dead and <name>.events extend, and that -Q and routing keys
# carry as they are; RabbitMQ keeps names starting with "amq." to itself.
QUEUE_NAME = _kind(
    r"^(?!amq\.)[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$",
    "letters, digits and . _ : - (up to 200 characters, starting with a letter or digit, not amq.)",
)
