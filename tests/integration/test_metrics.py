"""``/metrics``: who may read it, and figures that move as jobs are asked for and run."""

from __future__ import annotations

import logging
import re
import uuid

import pytest

from api import create_app
from provisioning.enums import Role
from provisioning.jobs.runner import JobRunner
from provisioning.messaging.events import EventRelay
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.helpers import assert_error
from tests.stack import delete_queues

JOBS = "/api/v1/provisioning/jobs"
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def scrape(client, **kwargs) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    samples = {}
    for line in response.get_data(as_text=True).splitlines():
        if (match := SAMPLE.match(line)) is not None:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            samples[(match["name"], labels)] = float(match["value"])
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def quiet_settings(settings):
    """A queue no worker reads, so the test's own runner is the one to run its job."""
    own = settings.model_copy(update={"provisioning_queue_name": f"{settings.provisioning_queue_name}.metrics"})
    yield own
    delete_queues(own.provisioning_queue_name)


def test_the_figures_move_as_a_job_is_asked_for_and_runs(quiet_settings, sessions, tenant_factory):
    settings = quiet_settings
    client = create_app(settings).test_client()
    tenant = tenant_factory.create()
    before = scrape(client)
    response = client.post(JOBS, json={"job_type": "create_site"}, headers=tenant.headers(Role.OWNER))
    assert response.status_code == 201
    pending = scrape(client)
    JobRunner.for_settings(settings, sessions, SimulatedDriver(step_seconds=0), "metrics@test").run(response.json["data"]["id"])
    after = scrape(client)

    created = "erpmax_jobs_created_total"
    assert value(pending, created, job_type="create_site") == value(before, created, job_type="create_site") + 1
    assert value(pending, "erpmax_jobs_active", status="pending") >= 1
    finished = ("erpmax_jobs_finished_total", {"job_type": "create_site", "status": "completed"})
    assert value(after, finished[0], **finished[1]) == value(pending, finished[0], **finished[1]) + 1
    durations = "erpmax_job_duration_seconds_count"
    assert value(after, durations, job_type="create_site") == value(before, durations, job_type="create_site") + 1
    post = {"method": "POST", "route": "/api/v1/provisioning/jobs", "status": "201"}
    assert value(after, "erpmax_http_requests_total", **post) == value(before, "erpmax_http_requests_total", **post) + 1
    assert value(after, "erpmax_http_request_duration_seconds_count", method="POST", route=post["route"]) >= 1
    queue = settings.provisioning_queue_name
    assert ("erpmax_queue_messages", frozenset({("queue", queue)})) in after
    assert ("erpmax_queue_messages", frozenset({("queue", f"{queue}.dead")})) in after
    assert value(after, "erpmax_broker_up") == 1
    waiting = "erpmax_job_events_waiting"
    assert value(after, waiting) == value(before, waiting) + 3, "pending, running and completed, not announced yet"

    while EventRelay(settings, sessions).relay():
        pass
    relayed = scrape(client)
    assert (value(relayed, waiting), value(relayed, "erpmax_oldest_waiting_job_event_age_seconds")) == (0, 0)


def test_metrics_answer_loopback_only_unless_a_token_is_set(client, settings):
    elsewhere = {"environ_base": {"REMOTE_ADDR": "10.1.2.3"}}
    body = assert_error(client.get("/metrics", **elsewhere), 403)
    assert "METRICS_TOKEN" in body["message"]

    guarded = create_app(settings.model_copy(update={"metrics_token": "scrape-me"})).test_client()
    assert_error(guarded.get("/metrics"), 401)  # loopback included: a proxy on this machine is loopback too
    assert_error(guarded.get("/metrics", headers={"Authorization": "Bearer wrong"}, **elsewhere), 401)
    assert guarded.get("/metrics", headers={"Authorization": "Bearer scrape-me"}, **elsewhere).status_code == 200


def test_a_dead_broker_is_a_figure_not_a_failed_scrape(settings):
    client = create_app(settings.model_copy(update={"broker_url": "amqp://guest:guest@127.0.0.1:1//"})).test_client()
    samples = scrape(client)
    assert value(samples, "erpmax_broker_up") == 0
    assert any(name == "erpmax_jobs_created_total" for name, _ in samples)


@pytest.mark.parametrize(
    "given, echoed",
    [
        ("portal-7f3a:order.1001", True),
        ("", False),
        ("has spaces in it", False),
        ("x" * 129, False),
        ("portal-7f3a\n", False),  # a WSGI server may hand a header over as it came
        (" portal-7f3a", False),
    ],
)
def test_every_answer_carries_a_request_id_and_the_job_keeps_it(client, tenant_factory, given, echoed):
    tenant = tenant_factory.create()
    given_as_is = {"HTTP_X_REQUEST_ID": given} if given else {}
    response = client.post(
        JOBS, json={"job_type": "create_site"}, headers=tenant.headers(Role.OWNER), environ_overrides=given_as_is
    )

    request_id = response.headers["X-Request-ID"]
    assert (request_id == given) is echoed
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", request_id)
    assert response.json["data"]["request_id"] == request_id
    assert client.get("/healthz").headers["X-Request-ID"]


def test_behind_a_trusted_proxy_the_client_address_comes_from_x_forwarded_for(settings):
    proxied = create_app(settings.model_copy(update={"proxy_count": 1})).test_client()
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    assert_error(proxied.get("/metrics", headers=forwarded), 403)  # the proxy is local; the client is not
    assert proxied.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200


def test_a_direct_client_cannot_claim_loopback_in_x_forwarded_for(settings):
    proxied = create_app(settings.model_copy(update={"proxy_count": 1})).test_client()
    spoofed = proxied.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert_error(spoofed, 403)


def test_before_any_worker_declared_the_queue_the_broker_is_up_nothing_waits_and_nothing_is_logged(settings, caplog):
    fresh = settings.model_copy(
        update={"provisioning_queue_name": f"{settings.provisioning_queue_name}.undeclared-{uuid.uuid4().hex[:6]}"}
    )
    caplog.set_level(logging.WARNING, logger="api.metrics")

    samples = scrape(create_app(fresh).test_client())

    assert value(samples, "erpmax_broker_up") == 1
    assert value(samples, "erpmax_queue_messages", queue=fresh.provisioning_queue_name) == 0
    assert ("erpmax_queue_messages", frozenset({("queue", fresh.dead_letter_queue_name)})) in samples
    assert caplog.records == []
