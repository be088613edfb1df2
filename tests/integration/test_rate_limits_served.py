"""The rate limits as deployed: the Procfile's gunicorn (the app made before its worker processes
fork, ``--preload``), two worker processes counting into the machine's Redis."""

from __future__ import annotations

import pytest
import redis
import requests

from provisioning.enums import Role
from tests.stack import REDIS_URL, WebProcess

CURRENT = "/api/v1/tenants/current"


@pytest.fixture(scope="module")
def web(environment, tmp_path_factory):
    process = WebProcess(
        environment,
        tmp_path_factory.mktemp("web") / "web.log",
        WEB_CONCURRENCY="2",
        RATE_LIMIT_STORAGE_URL=REDIS_URL,
        RATE_LIMIT_PER_TOKEN="4/minute",
    )
    yield process
    process.stop()
    # This run's counters only (their keys start with its queue name); the Redis is the machine's.
    machine_redis = redis.Redis.from_url(REDIS_URL)
    for key in machine_redis.scan_iter(match=f"{environment['PROVISIONING_QUEUE_NAME']}.limits:*"):
        machine_redis.delete(key)


def test_a_token_s_limit_holds_across_gunicorn_s_processes(web, tenant_factory):
    headers = tenant_factory.create().headers(Role.OWNER)
    # A connection each: the requests are spread over both processes, as the kernel hands them out.
    answers = [requests.get(web.url + CURRENT, headers=headers, timeout=10) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200] * 4 + [429] * 2, [answer.text for answer in answers]
    assert answers[-1].json()["code"] == 429 and 1 <= int(answers[-1].headers["Retry-After"]) <= 60
