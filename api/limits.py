"""Rate limits: failed authentications per client address, requests per token, job requests per
tenant. A request over a limit is answered 429 in the error shape, with ``Retry-After``: the
whole seconds until the limit has room again.

- ``RATE_LIMIT_FAILED_AUTH``, per client address (``request.remote_addr``, which
  ``api.forwarded`` resolves behind trusted proxies only): the 401s of requests that presented
  credentials (an ``Authorization`` header). Once they are used up, every request from the
  address that presents credentials is refused before its token is even looked up, so guessing
  stops, until the window frees. Requests without credentials are answered 401 as always and
  not counted (they guess nothing); successful requests never count.
- ``RATE_LIMIT_PER_TOKEN``: every request of an authenticated token, keyed by the token's sha256
  (never the token), checked right after authentication.
- ``RATE_LIMIT_CREATES``: the jobs a tenant's requests make (``POST /jobs`` of any type, and
  retries, which make a job too). Checked after authentication, when the tenant is known, and
  before the body is read; counted once answered 201, so a refused request (a 409: a job is
  active) does not use the tenant's allowance (an ``Idempotency-Key`` replay, answered 201 with
  the job it made before, counts: it is not told apart here). Platform operators acting for a
  tenant are not held to it: a tenant's runaway script must not lock out the people fixing it.
  Two requests at once may both pass with one job left: the limit can be passed by the requests
  in flight, never by more.

Only the blueprints that need a token are limited (``create_app`` names them); ``/healthz``,
``/readyz``, ``/metrics``, ``/docs`` and ``/openapi.json`` never are. Every 429 is counted in
``erpmax_rate_limited_total`` by limit. The counters live in ``api.limit_storage``; refused requests
are audited by ``api.refusals``.

Flask-Limiter (which counts with this same ``limits`` library) was weighed and not used: it
decides in a ``before_request`` of the app, before the blueprint's authentication, so two of the
three limits (per token, per tenant) could be checked only by its decorators on MethodView
methods, which check at call time or not depending on how the view was registered; and its
in-memory fallback covers only the limits it checks itself, not the refusals' audit.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable

from apispec import BasePlugin
from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse_many

from api.errors import http_error
from api.limit_storage import LimitStorage
from api.metrics import RATE_LIMITED
from api.refusals import RefusalAudit
from provisioning.accounts.registry import hash_token
from provisioning.platform.settings import Settings

FAILED_AUTH, PER_TOKEN, JOB_REQUESTS = "failed_auth", "per_token", "job_requests"
EXTENSION = "provisioning_rate_limits"
# The 429's response in the OpenAPI document's components.
RESPONSE = "RATE_LIMITED"
RETRY_AFTER_DOC = {
    "description": "Whole seconds until the limit has room again",
    "schema": {"type": "integer", "minimum": 1},
}


class RateLimits:
    """The three limits of one app, counted in one ``LimitStorage``."""

    def __init__(self, settings: Settings, blueprints: Iterable[str]):
        # The deployment's queue name: deployments and test runs sharing a Redis never meet.
        self.storage = LimitStorage(settings.rate_limit_storage_url, f"{settings.provisioning_queue_name}.limits")
        self.limits: dict[str, list[RateLimitItem]] = {
            FAILED_AUTH: parse_many(settings.rate_limit_failed_auth),
            PER_TOKEN: parse_many(settings.rate_limit_per_token),
            JOB_REQUESTS: parse_many(settings.rate_limit_creates),
        }
        self.blueprints = frozenset(blueprints)
        self.refusals = RefusalAudit(self.storage)

    def applies(self) -> bool:
        return request.blueprint in self.blueprints

    @staticmethod
    def address() -> str:
        return request.remote_addr or "unknown"  # absent only when the peer's was no address (api.forwarded)

    def refuse_blocked_address(self) -> None:
        """Before authentication: 429 for credentials from an address out of failed authentications."""
        if self.applies() and "Authorization" in request.headers:
            address = self.address()
            self.refuse_when_used_up(FAILED_AUTH, address, f"too many failed authentications from {address}")

    def after_response(self, response: Response) -> Response:
        """Count a failed authentication against the address; audit a refusal."""
        if not self.applies():
            return response
        if response.status_code == 401 and "Authorization" in request.headers:
            self.count(FAILED_AUTH, self.address())
        if response.status_code in (401, 403):
            self.refusals.record(response)
        return response

    def count(self, name: str, subject: str) -> None:
        self._seconds_to_wait(name, subject, counting=True)

    def refuse_when_used_up(self, name: str, subject: str, why: str, counting: bool = False) -> None:
        """429 if ``subject`` has used up a limit of ``name`` (counting this request first, if asked)."""
        if wait := self._seconds_to_wait(name, subject, counting):
            RATE_LIMITED.labels(name).inc()
            allowed = ", ".join(str(limit) for limit in self.limits[name])
            raise http_error(429, f"{why} (at most {allowed}); try again in {wait} s", {"Retry-After": str(wait)})

    def _seconds_to_wait(self, name: str, subject: str, counting: bool) -> int:
        """Whole seconds until every limit of ``name`` has room for ``subject`` again; 0 if each has now.

        Counting hits every limit of the setting (``10/second;1000/day``), each refused request
        too: a client that keeps knocking keeps its windows full."""

        def look(strategy) -> float:
            check = strategy.hit if counting else strategy.test
            used_up = [limit for limit in self.limits[name] if not check(limit, name, subject)]
            return max((strategy.get_window_stats(limit, name, subject).reset_time for limit in used_up), default=0.0)

        frees_at = self.storage.run(look)
        return max(1, math.ceil(frees_at - time.time())) if frees_at else 0


def init_rate_limits(app: Flask, settings: Settings, blueprints: Iterable[str]) -> BasePlugin:
    """Limit the blueprints named; returns the apispec plugin that documents their 429."""
    limits = app.extensions[EXTENSION] = RateLimits(settings, blueprints)
    app.before_request(limits.refuse_blocked_address)
    app.after_request(limits.after_response)
    return RateLimitDocs(limits.blueprints)


def count_token_request(token: str) -> None:
    """Right after ``token`` authenticated a request: count it, or refuse it (429)."""
    current_app.extensions[EXTENSION].refuse_when_used_up(
        PER_TOKEN, hash_token(token), "too many requests with this token", counting=True
    )


def limited_as_job_request(view):
    """A view that makes a job for the caller's tenant: 429 before it runs when the tenant's job
    requests are used up; counted when it answers 201. Put it below ``writers_only`` (a member
    learns 403, and uses nothing up) and above flask-smorest's decorators (nothing is read first)."""

    @functools.wraps(view)
    def limited(*args, **kwargs):
        if g.caller.is_operator:
            return view(*args, **kwargs)
        limits, tenant = current_app.extensions[EXTENSION], str(g.caller.tenant.id)
        limits.refuse_when_used_up(JOB_REQUESTS, tenant, "too many job requests for this tenant")
        response = view(*args, **kwargs)
        if response.status_code == 201:
            limits.count(JOB_REQUESTS, tenant)
        return response

    return limited


class RateLimitDocs(BasePlugin):
    """apispec plugin: the 429, with its ``Retry-After``, on every operation of the limited blueprints."""

    def __init__(self, blueprints: frozenset[str]):
        self.blueprints = blueprints

    def init_spec(self, spec) -> None:
        super().init_spec(spec)
        spec.components.response(
            RESPONSE,
            {
                "description": "A rate limit is used up: too many failed authentications from the address, "
                "requests with the token, or job requests for the tenant; `Retry-After` says when to try again",
                "content": {"application/json": {"schema": "Error"}},
                "headers": {"Retry-After": RETRY_AFTER_DOC},
            },
        )

    def operation_helper(self, path=None, operations=None, **kwargs) -> None:
        rule = kwargs.get("rule")
        if rule is not None and rule.endpoint.partition(".")[0] in self.blueprints:
            for operation in operations.values():
                operation.setdefault("responses", {})["429"] = RESPONSE
