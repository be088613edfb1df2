"""Every request gets an id and one log line.

The id is the client's ``X-Request-ID`` when it sent a usable one (a proxy's, a portal's), else a
new one; it is bound for every line the request logs, returned in the response's header, stored
on the jobs the request makes, and carried in their task messages to the worker.
"""

from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, Response, g, request

from provisioning.platform import logs
from provisioning.platform.identifiers import REQUEST_ID

log = logging.getLogger("api.requests")

HEADER = "X-Request-ID"
# Scraped or probed every few seconds: their lines would drown the others unless asked for.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def request_id() -> str:
    given = request.headers.get(HEADER, "")
    return given if REQUEST_ID.is_valid(given) else uuid.uuid4().hex


def init_request_log(app: Flask) -> None:
    @app.before_request
    def bind_request_id() -> None:
        g.request_id = request_id()
        g.request_started = time.perf_counter()
        g.log_fields = logs.bind(request_id=g.request_id)

    @app.after_request
    def answer_with_request_id(response: Response) -> Response:
        response.headers[HEADER] = g.get("request_id") or request_id()
        elapsed_ms = (time.perf_counter() - g.get("request_started", time.perf_counter())) * 1000
        level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
        log.log(level, "%s %s %d %.1fms", request.method, request.path, response.status_code, elapsed_ms)
        return response

    @app.teardown_request
    def unbind_request_id(_error: BaseException | None) -> None:
        fields = g.pop("log_fields", None)
        if fields is not None:
            logs.unbind(fields)
