"""A webhook receiver the tests run on loopback, and a signature verifier written from the Standard
Webhooks convention's own description, never from our signing code (so the two cannot share a mistake).

The convention: a request carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``, a space-separated list of ``<version>,<base64 signature>``; a ``v1``
signature is the HMAC-SHA256, keyed with the base64-decoded part of the secret after ``whsec_``,
of the text ``{id}.{timestamp}.{body}``. Any one matching ``v1`` signature verifies the request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# How far a request's timestamp may be from now, as receivers following the convention allow.
TOLERANCE_SECONDS = 300


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """Whether ``secret`` signed this request, and its timestamp is recent."""
    message_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    key = base64.b64decode(secret[len("whsec_") :] if secret.startswith("whsec_") else secret)
    content = message_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    for versioned in headers["webhook-signature"].split(" "):
        version, _, signature = versioned.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return True
    return False


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # when it arrived (Unix seconds)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> dict:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return self.event["type"]

    def signed_by(self, secret: str) -> bool:
        return verify(secret, self.headers, self.body)


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers ``status``; with ``hold`` set,
    it keeps each request waiting (until ``release()``) before answering, as a slow receiver does.
    With ``trickle`` (seconds), it sends its answer a byte at a time, that long apart: each read of
    the sender's returns in time, the answer never does."""

    def __init__(self, status: int = 200, trickle: float | None = None):
        self.status = status
        self.trickle = trickle
        self.requests: list[Received] = []
        self.held = threading.Event()  # a request is being held
        self._release = threading.Event()
        self._release.set()
        self._closed = threading.Event()  # ends a trickle under way
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                if not receiver._release.is_set():
                    receiver.held.set()
                    receiver._release.wait(60)
                if receiver.trickle:
                    self._trickle(f"HTTP/1.1 {receiver.status} OK\r\nContent-Length: 0\r\n\r\n".encode())
                    return
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _trickle(self, answer: bytes) -> None:
                try:
                    for byte in answer:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        if receiver._closed.wait(receiver.trickle):
                            return
                except OSError:
                    self.close_connection = True  # the sender cut the connection

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def received(self, event_type: str | None = None) -> list[Received]:
        with self._lock:
            return [request for request in self.requests if event_type in (None, request.type)]

    def hold(self) -> None:
        self.held.clear()
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._closed.set()
        self.release()
        self.server.shutdown()
        self.server.server_close()
