"""Rate limits on the machine's Redis, with tiny limits: failed authentications per address,
requests per token, job requests per tenant; a 429 in the error shape with ``Retry-After``; the
429 in the OpenAPI document; refused requests audited without flooding the trail; and an API
that keeps serving when the limits' storage cannot be reached.

The counters are this run's own: their keys start with the run's queue name, and are dropped
after each test (only those keys: the Redis is the machine's).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from limits import parse
from prometheus_client import REGISTRY
from sqlalchemy import select

from api import create_app
from api.limit_storage import LimitStorage
from api.limits import EXTENSION
from provisioning.enums import Role
from provisioning.models import AuditEntry
from provisioning.operations.embedded_broker import NoDelayFakeRedisServer
from tests.factories import operator_headers
from tests.helpers import assert_error
from tests.integration.conftest import joining
from tests.processes import free_port
from tests.stack import REDIS_URL

pytestmark = pytest.mark.usefixtures("rolled_back")  # each app's rows, audit entries included, go with the test

JOBS = "/api/v1/provisioning/jobs"
CURRENT = "/api/v1/tenants/current"
GUESS = {"Authorization": "Bearer erpx_a-guess-that-names-no-token"}
# Addresses of the documentation ranges, one per role in a test.
GUESSER, NEIGHBOUR = "198.51.100.7", "198.51.100.8"


def source(address: str) -> dict:
    return {"environ_base": {"REMOTE_ADDR": address}}


def rate_limited(counted: str) -> float:
    return REGISTRY.get_sample_value("erpmax_rate_limited_total", {"limit": counted}) or 0.0


def assert_too_many(response, *in_message: str, at_most: int) -> dict:
    body = assert_error(response, 429)
    assert 1 <= int(response.headers["Retry-After"]) <= at_most, response.headers.get("Retry-After")
    assert all(part in body["message"] for part in in_message), body["message"]
    return body


@pytest.fixture
def app_of(unread_settings, rolled_back):
    """Makes apps with the settings given, working in the test's transaction."""

    def make(**given):
        app = create_app(unread_settings.model_copy(update=given))
        app.extensions["provisioning_sessions"].configure(**joining(rolled_back))
        return app

    return make


@pytest.fixture
def limited(app_of):
    """Makes apps with the limits given, counting on the machine's Redis under this run's prefix."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis is not answering at {REDIS_URL}: {error}")
    made = []

    def make(**limits):
        made.append(app_of(rate_limit_storage_url=REDIS_URL, **limits))
        return made[-1]

    yield make
    for app in made:
        app.extensions[EXTENSION].storage.configured.storage.reset()  # this run's keys only


def test_failed_authentications_block_the_address_s_credentials_until_the_window_frees(limited, tenant_factory):
    client = limited(rate_limit_failed_auth="3/minute").test_client()
    owner = tenant_factory.create().headers(Role.OWNER)
    for _ in range(5):  # successes never count
        assert client.get(CURRENT, headers=owner, **source(GUESSER)).status_code == 200
    for _ in range(3):
        assert_error(client.get(CURRENT, headers=GUESS, **source(GUESSER)), 401)
    blocked_before = rate_limited("failed_auth")

    assert_too_many(client.get(CURRENT, headers=GUESS, **source(GUESSER)), "failed authentications", GUESSER, at_most=60)
    assert_too_many(client.get(CURRENT, headers=owner, **source(GUESSER)), "failed authentications", at_most=60)
    assert client.get(CURRENT, headers=owner, **source(NEIGHBOUR)).status_code == 200
    assert_error(client.get(CURRENT, **source(GUESSER)), 401)  # no credentials: nothing to refuse them for
    assert rate_limited("failed_auth") == blocked_before + 2


def test_every_web_process_counts_into_the_same_failed_authentications(limited):
    first, second = (limited(rate_limit_failed_auth="3/minute").test_client() for _ in range(2))
    for client in (first, second, first):
        assert_error(client.get(CURRENT, headers=GUESS, **source(GUESSER)), 401)
    assert_too_many(second.get(CURRENT, headers=GUESS, **source(GUESSER)), "failed authentications", at_most=60)


def test_behind_a_trusted_proxy_each_client_is_limited_by_its_own_address(limited, tenant_factory):
    client = limited(rate_limit_failed_auth="2/minute", proxy_count=1).test_client()  # the proxy: on loopback
    owner = tenant_factory.create().headers(Role.OWNER)

    def through_proxy(address: str, headers: dict) -> dict:
        return {"headers": {**headers, "X-Forwarded-For": address}, **source("127.0.0.1")}

    for _ in range(2):
        assert_error(client.get(CURRENT, **through_proxy(GUESSER, GUESS)), 401)
    assert_too_many(client.get(CURRENT, **through_proxy(GUESSER, owner)), GUESSER, at_most=60)
    assert client.get(CURRENT, **through_proxy(NEIGHBOUR, owner)).status_code == 200


def test_a_token_s_requests_are_limited_and_another_token_is_not(limited, tenant_factory, session):
    client = limited(rate_limit_per_token="3/minute").test_client()
    tenant = tenant_factory.create()
    for _ in range(3):
        assert client.get(CURRENT, headers=tenant.headers(Role.OWNER)).status_code == 200
    before = rate_limited("per_token")

    body = assert_too_many(client.get(JOBS, headers=tenant.headers(Role.OWNER)), "with this token", at_most=60)
    assert "3 per 1 minute" in body["message"]
    assert client.get(CURRENT, headers=tenant.headers(Role.ADMIN)).status_code == 200
    assert rate_limited("per_token") == before + 1


def test_a_tenant_s_job_requests_are_limited_and_another_tenant_s_are_not(limited, tenant_factory, session):
    client = limited(rate_limit_creates="2/hour").test_client()
    tenant, other = tenant_factory.create(), tenant_factory.create()
    owner = tenant.headers(Role.OWNER)

    def create(headers):
        return client.post(JOBS, json={"job_type": "create_site"}, headers=headers)

    first = create(owner)
    assert first.status_code == 201
    assert_error(create(owner), 409)  # a job is active: refused, and not counted
    assert client.post(f"{JOBS}/{first.json['data']['id']}/cancel", headers=owner).status_code == 200
    second = create(owner)
    assert second.status_code == 201
    assert client.post(f"{JOBS}/{second.json['data']['id']}/cancel", headers=owner).status_code == 200

    assert_too_many(create(owner), "job requests for this tenant", at_most=3600)
    assert_error(create(tenant.headers(Role.MEMBER)), 403)  # the role is refused before the limit
    assert create(other.headers(Role.OWNER)).status_code == 201
    assert create({**operator_headers(session), "X-Tenant-ID": tenant.tenant.slug}).status_code == 201  # not held to it


def test_every_operation_that_needs_a_token_documents_its_429_with_retry_after(client):
    spec = client.get("/openapi.json").json
    response = spec["components"]["responses"]["RATE_LIMITED"]
    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert response["headers"]["Retry-After"]["schema"]["type"] == "integer"
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            documented = operation["responses"].get("429")
            if path in ("/healthz", "/readyz"):
                assert documented is None, (method, path)
            else:
                assert documented == {"$ref": "#/components/responses/RATE_LIMITED"}, (method, path)


def refusals_from(session, address: str) -> list[AuditEntry]:
    query = select(AuditEntry).where(AuditEntry.action == "request.refused", AuditEntry.ip == address)
    return list(session.scalars(query.order_by(AuditEntry.id)))


def test_a_burst_of_refusals_is_one_audit_entry_and_the_next_counts_the_rest(limited, tenant_factory, session):
    app = limited(rate_limit_failed_auth="1000/minute")
    client = app.test_client()
    guesser = {**GUESS, "User-Agent": "guesser/1.0"}
    for _ in range(50):
        assert_error(client.get(CURRENT, headers=guesser, **source(GUESSER)), 401)

    (entry,) = refusals_from(session, GUESSER)
    assert (entry.actor, entry.user_agent, entry.target) == ("anonymous", "guesser/1.0", f"GET {CURRENT}")
    assert entry.detail == "401: unknown token"
    assert "a-guess" not in f"{entry.target} {entry.detail} {entry.actor}"  # never the token

    # The next entry's minute made to begin at once: it reports the 49 it did not write, and itself.
    app.extensions[EXTENSION].refusals.audited_once_per = parse("1/second")
    assert_error(client.get(CURRENT, headers=guesser, **source(GUESSER)), 401)
    assert [entry.detail for entry in refusals_from(session, GUESSER)] == [
        "401: unknown token",
        "401: unknown token; 50 refused like this from this address since the previous entry",
    ]


def test_a_refused_role_is_audited_with_the_user_and_tenant_as_a_kind_of_its_own(limited, tenant_factory, session):
    client = limited().test_client()
    tenant = tenant_factory.create()
    member = tenant.headers(Role.MEMBER)
    for _ in range(3):
        assert_error(client.post(JOBS, json={"job_type": "create_site"}, headers=member, **source(NEIGHBOUR)), 403)
    assert_error(client.get(CURRENT, headers=GUESS, **source(NEIGHBOUR)), 401)

    forbidden, unknown = refusals_from(session, NEIGHBOUR)
    assert (forbidden.actor, forbidden.tenant_id) == (f"user {tenant.users[Role.MEMBER].id}", tenant.id)
    assert forbidden.detail.startswith("403: ") and forbidden.target == f"POST {JOBS}"
    assert (unknown.actor, unknown.tenant_id, unknown.detail) == ("anonymous", None, "401: unknown token")


@pytest.fixture(params=["refused", "silent"])
def unreachable_redis(request):
    """A Redis URL where nothing answers: a port nobody listens on, or one that takes connections
    and never says a word (a hung server: only the client's timeouts end the wait)."""
    if request.param == "refused":
        yield f"redis://127.0.0.1:{free_port()}/0"
        return
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        yield f"redis://127.0.0.1:{silent.getsockname()[1]}/0"


def test_with_the_storage_unreachable_the_api_serves_and_limits_in_memory(app_of, tenant_factory, unreachable_redis, caplog):
    client = app_of(rate_limit_storage_url=unreachable_redis, rate_limit_per_token="3/minute").test_client()
    owner = tenant_factory.create().headers(Role.OWNER)

    started = time.monotonic()
    assert client.get(CURRENT, headers=owner).status_code == 200
    assert time.monotonic() - started < 5  # one try of the storage, cut short by its timeouts
    for _ in range(2):
        assert client.get(CURRENT, headers=owner).status_code == 200
    assert_too_many(client.get(CURRENT, headers=owner), "with this token", at_most=60)
    assert_error(client.get(CURRENT, headers=GUESS), 401)
    warnings = [record.getMessage() for record in caplog.records if record.name == "api.limit_storage"]
    assert len(warnings) == 1 and "counting in this process's memory" in warnings[0], warnings


def test_once_the_storage_answers_again_the_limits_count_there(caplog):
    """The machine's Redis cannot be stopped for this (others use it): the Redis that comes back is
    the quickstart's emulation, started on the port where nothing answered."""
    port = free_port()
    storage = LimitStorage(f"redis://127.0.0.1:{port}/0", "recovery", retry_seconds=0)  # tried again at every count
    minute = parse("5/minute")
    assert storage.run(lambda strategy: strategy.hit(minute, "k"))
    assert storage.failed_until and storage.fallback.get_window_stats(minute, "k").remaining == 4

    server = NoDelayFakeRedisServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert storage.run(lambda strategy: strategy.hit(minute, "k"))
        assert storage.failed_until == 0 and storage.configured.get_window_stats(minute, "k").remaining == 4
    finally:
        server.shutdown()
        server.server_close()
    messages = [record.getMessage() for record in caplog.records if record.name == "api.limit_storage"]
    assert "counting in this process's memory" in messages[0] and "answers again" in messages[1], messages
