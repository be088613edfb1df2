"""How gunicorn serves the API: an asyncio loop reads each request whole, threads run the app.

gunicorn's sync worker gives one process to one connection from its first byte to its last, so
two clients that send half a request and stop hold two workers until ``--timeout`` kills them;
its gthread worker does the same with a thread, for as long as the client stays silent. Here
gunicorn's asyncio worker reads the request line, the headers and (``WholeBodies``) the body on
its event loop, where a silent connection costs a socket and a little memory, and only a complete
request reaches a thread of a pool of ``--threads`` (a2wsgi's), where the app (Flask, SQLAlchemy,
psycopg, all blocking) runs as under any threaded server. So the database code sees ordinary
threads, never the event loop.

What gunicorn still does not bound: a connection that never finishes its headers is never timed
out (gunicorn has no header timeout), and connections are not counted against
``worker_connections``, so a client with thousands of sockets can still run a worker out of file
descriptors. A reverse proxy in front bounds those (README, Production).
"""

from __future__ import annotations

import json
import signal
from http import HTTPStatus

from a2wsgi import WSGIMiddleware
from gunicorn.workers.gasgi import ASGIWorker

from api import MAX_BODY_BYTES


class ThreadedWSGIWorker(ASGIWorker):
    """gunicorn's asyncio worker serving a WSGI app (``"api:create_app()"``) on ``--threads`` threads."""

    @classmethod
    def check_config(cls, cfg, log) -> None:
        """Unlike the plain asyncio worker, this one uses ``--threads`` (gunicorn would warn)."""

    def handle_quit_signal(self) -> None:
        """SIGINT or SIGQUIT: exit at once, and ignore further signals meanwhile.

        asyncio's loop closes its self-pipe before it takes its signal handlers away, so a second
        signal in between (a terminal's Ctrl-C reaches the worker, then honcho's SIGTERM) is
        written to a closed pipe and prints a traceback; the worker is leaving anyway.
        """
        super().handle_quit_signal()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_IGN)

    def load_wsgi(self) -> None:
        super().load_wsgi()  # sets self.asgi to what the app factory made: a WSGI app
        self.asgi = WholeBodies(WSGIMiddleware(self.asgi, workers=self.cfg.threads), MAX_BODY_BYTES)


class WholeBodies:
    """ASGI middleware: read a request's body on the event loop before the app gets the request.

    a2wsgi hands the body to the app's thread as it arrives, so a client that sends its headers
    and then a body one byte at a time would hold a thread for as long as it likes. Buffered here
    instead, the body costs at most ``max_bytes`` of memory and no thread. A body announced
    larger than ``max_bytes`` is not read at all, and one that grows past it (chunked, with no
    Content-Length) is read only that far: either way the app sees a length over its
    ``MAX_CONTENT_LENGTH`` and answers 413, and gunicorn closes the connection, whose body was
    never read to its end. A chunked body that ends in time reaches the app with a
    ``Content-Length`` instead, as a buffering proxy would send it (WSGI apps may ignore a body
    whose length is not given).

    A client that stops sending before its body ends, for as long as gunicorn's ``--timeout``,
    is answered 408 in the API's error shape (one that hangs up gets nothing).
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = _content_length(scope["headers"])
        if announced is not None and announced > self.max_bytes:
            await self.app(scope, receive, send)  # refused from its header alone
            return
        body = bytearray()
        more = True
        while more and len(body) <= self.max_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                await _send_error(send, 408, "the request body did not arrive in time")
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(name, value) for name, value in scope["headers"] if name not in (b"content-length", b"transfer-encoding")]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, _replay(bytes(body), receive), send)


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # gunicorn has checked it is one non-negative number
    return None


def _replay(body: bytes, receive):
    """The buffered body as one message, then whatever the connection says next (a disconnect)."""
    delivered = False

    async def replayed():
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _send_error(send, status: int, message: str) -> None:
    """An error in the API's shape (``api.errors``), for the one answer given before the app runs."""
    body = json.dumps({"code": status, "status": HTTPStatus(status).phrase, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
