"""``/metrics`` per bench server: sites, capacity, jobs, status and each server's queue depth, on a
database and queue of the test's own (``isolated``), so the figures are this test's alone."""

from __future__ import annotations

import re

from api import create_app
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from tests.factories import TenantFactory, operator_headers

SERVERS = "/api/v1/servers"
JOBS = "/api/v1/provisioning/jobs"
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")

# The servers these tests add: their queues are deleted after each test.
SERVER_NAMES = ("bench-b",)


def scrape(client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    samples = {}
    for line in response.get_data(as_text=True).splitlines():
        if (match := SAMPLE.match(line)) is not None:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            samples[(match["name"], labels)] = float(match["value"])
    return samples


def of(samples, name: str, **labels: str) -> float | None:
    """The sample's value; None when the scrape has no such sample."""
    return samples.get((name, frozenset(labels.items())))


def test_each_server_shows_its_sites_jobs_status_and_queue(stack):
    settings = stack.settings
    client = create_app(settings).test_client()
    with stack.session() as session:
        operator = operator_headers(session)
        tenants = [TenantFactory(session).create() for _ in range(3)]
        session.commit()
    assert client.post(SERVERS, json={"name": "bench-b", "capacity": 7}, headers=operator).status_code == 201
    for tenant in tenants[:2]:
        answer = client.post(
            JOBS,
            json={"job_type": "create_site", "server": DEFAULT_SERVER_NAME},
            headers={**operator, "X-Tenant-ID": str(tenant.id)},
        )
        assert answer.status_code == 201, answer.json
    pinned = client.post(
        JOBS, json={"job_type": "create_site", "server": "bench-b"}, headers={**operator, "X-Tenant-ID": str(tenants[2].id)}
    )
    assert pinned.status_code == 201, pinned.json

    before = scrape(client)

    assert of(before, "erpmax_server_sites", server=DEFAULT_SERVER_NAME) == 2
    assert of(before, "erpmax_server_sites", server="bench-b") == 1
    assert of(before, "erpmax_server_capacity", server="bench-b") == 7
    assert of(before, "erpmax_server_pending_jobs", server=DEFAULT_SERVER_NAME) == 2
    assert of(before, "erpmax_server_active_jobs", server="bench-b") == 1
    assert of(before, "erpmax_server_status", server="bench-b", status="active") == 1
    assert of(before, "erpmax_server_status", server="bench-b", status="down") == 0
    # Each server's queue, with what was sent to it and no worker took: the default server's is
    # the deployment's own queue.
    assert of(before, "erpmax_queue_messages", queue=settings.provisioning_queue_name) == 2
    assert of(before, "erpmax_queue_messages", queue=settings.queue_of_server("bench-b")) == 1
    assert of(before, "erpmax_queue_messages", queue=settings.dead_letter_queue_name) == 0

    patch = client.patch(f"{SERVERS}/bench-b", json={"status": "down"}, headers=operator)
    assert patch.status_code == 200

    down = scrape(client)
    assert of(down, "erpmax_server_status", server="bench-b", status="down") == 1
    assert of(down, "erpmax_server_status", server="bench-b", status="active") == 0
    assert of(down, "erpmax_server_status", server=DEFAULT_SERVER_NAME, status="active") == 1
    assert of(down, "erpmax_server_pending_jobs", server="bench-b") == 1


def test_a_server_added_with_no_job_sent_yet_has_an_empty_queue_shown(stack):
    """Its queue is not declared until its worker starts or a job is sent: it shows 0, not nothing."""
    client = create_app(stack.settings).test_client()
    with stack.session() as session:
        operator = operator_headers(session)
    assert client.post(SERVERS, json={"name": "bench-b"}, headers=operator).status_code == 201

    samples = scrape(client)

    assert of(samples, "erpmax_queue_messages", queue=stack.settings.queue_of_server("bench-b")) == 0
    assert of(samples, "erpmax_server_sites", server="bench-b") == 0
    assert of(samples, "erpmax_broker_up") == 1
