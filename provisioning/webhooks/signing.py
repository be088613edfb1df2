"""Webhook secrets and signatures, as the Standard Webhooks convention has them.

A secret is ``whsec_`` and the base64 of 24 random bytes. Each attempt carries ``webhook-id``
(the delivery's, the same on every attempt), ``webhook-timestamp`` (the attempt's, in Unix
seconds, so a receiver can refuse replays of old requests) and ``webhook-signature``: ``v1,``
and the base64 of the HMAC-SHA256, keyed with the secret's decoded bytes, of
``{id}.{timestamp}.{body}``. During a rotation's overlap a delivery is signed with the new and
the previous secret, space-separated: a receiver holding either verifies it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

PREFIX = "whsec_"
SECRET_BYTES = 24
MESSAGE_ID = re.compile(r"msg_[0-9a-f]{32}")


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_message_id() -> str:
    """A delivery's ``webhook-id``: unique, and safe in a URL path and a header."""
    return "msg_" + secrets.token_hex(16)


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(message_id: str, timestamp: int, body: bytes, signing_secrets: list[str]) -> dict[str, str]:
    """The headers of one attempt, signed with each of ``signing_secrets`` (the current one first)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(secret, message_id, timestamp, body) for secret in signing_secrets),
        "content-type": "application/json",
    }
