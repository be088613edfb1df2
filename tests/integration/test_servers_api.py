"""``/api/v1/servers`` as a platform operator meets it, and placement as API clients meet it
through ``POST /api/v1/provisioning/jobs``: each test on a database and queue of its own
(``isolated``), since adding, draining and filling servers changes where every tenant goes.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, update

from api import create_app
from provisioning.accounts import audit
from provisioning.accounts import registry as accounts
from provisioning.enums import JobStatus, JobType, Role, TenantStatus
from provisioning.jobs.runner import JobRunner
from provisioning.jobs.service import ProvisioningService
from provisioning.messaging.broker import queue_depths
from provisioning.models import ProvisioningJob, Server, Tenant
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from provisioning.servers.registry import MAX_LABELS
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.helpers import StrictClient, assert_error

SERVERS = "/api/v1/servers"
JOBS = "/api/v1/provisioning/jobs"
# Every server these tests add: their queues are deleted after each test.
SERVER_NAMES = ("bench-a", "bench-b", "bench-c", "bench-eu", "bench-us")
SERVER_FIELDS = {
    "id", "name", "status", "capacity", "labels", "site_count", "active_jobs", "queue", "created_at", "updated_at",
    "standby_pool_size", "standby_batch", "standby_ready", "standby_making",
}  # fmt: skip


@pytest.fixture
def session(stack):
    with stack.sessions() as session:
        yield session


@pytest.fixture
def app(stack):
    app = create_app(stack.settings)
    app.config["TESTING"] = True
    app.test_client_class = StrictClient
    return app


class Operator:
    """A platform operator (a superuser with no tenant) and its token."""

    def __init__(self, session):
        self.user = accounts.create_user(session, f"operator-{uuid.uuid4().hex[:10]}@example.test", is_superuser=True)
        self.headers = {"Authorization": f"Bearer {accounts.issue_token(session, self.user, name='test')[1]}"}
        session.commit()

    def acting_for(self, tenant) -> dict[str, str]:
        return {**self.headers, "X-Tenant-ID": str(tenant.id)}


@pytest.fixture
def operator(session) -> Operator:
    return Operator(session)


def add(client, operator, name: str, capacity: int = 10, **labels: str) -> dict:
    response = client.post(SERVERS, json={"name": name, "capacity": capacity, "labels": labels}, headers=operator.headers)
    assert response.status_code == 201, response.json
    return response.json["data"]


def patch(client, operator, name: str, **body) -> dict:
    response = client.patch(f"{SERVERS}/{name}", json=body, headers=operator.headers)
    assert response.status_code == 200, response.json
    return response.json["data"]


def server_of(session, tenant) -> str | None:
    session.expire_all()
    return session.scalar(select(Server.name).join(Tenant, Tenant.server_id == Server.id).where(Tenant.id == tenant.id))


# The registry.


def test_an_operator_adds_reads_changes_and_removes_a_server(client, operator, stack):
    response = client.post(
        SERVERS, json={"name": "bench-eu", "capacity": 2, "labels": {"region": "eu"}}, headers=operator.headers
    )

    assert response.status_code == 201, response.json
    added = response.json["data"]
    assert set(added) == SERVER_FIELDS
    assert (added["name"], added["status"], added["capacity"], added["labels"]) == ("bench-eu", "active", 2, {"region": "eu"})
    assert (added["site_count"], added["active_jobs"]) == (0, 0)
    # No standby pool until the operator asks for one.
    assert (added["standby_pool_size"], added["standby_batch"], added["standby_ready"], added["standby_making"]) == (0, 1, 0, 0)
    # The queue its workers are started on, as `provisioning server queue` prints it for SERVER_NAME=bench-eu.
    assert added["queue"] == f"{stack.settings.provisioning_queue_name}.server.bench-eu"
    assert response.headers["Location"].endswith(f"{SERVERS}/bench-eu")
    assert client.get(response.headers["Location"], headers=operator.headers).json["data"] == added

    changed = patch(client, operator, "bench-eu", capacity=5, labels={"region": "eu", "plan": "large"})
    assert (changed["capacity"], changed["labels"]) == (5, {"region": "eu", "plan": "large"})
    assert patch(client, operator, "bench-eu", status="draining")["status"] == "draining"
    assert patch(client, operator, "bench-eu", status="down")["status"] == "down"
    assert patch(client, operator, "bench-eu", status="active")["status"] == "active"
    assert client.get(f"{SERVERS}/bench-eu", headers=operator.headers).json["data"]["capacity"] == 5

    removed = client.delete(f"{SERVERS}/bench-eu", headers=operator.headers)
    assert removed.status_code == 200 and removed.json["data"]["name"] == "bench-eu"
    assert_error(client.get(f"{SERVERS}/bench-eu", headers=operator.headers), 404)


def test_the_default_server_of_a_new_deployment_is_listed_with_its_queue(client, operator, stack):
    listed = client.get(SERVERS, headers=operator.headers).json
    assert [server["name"] for server in listed["data"]] == [DEFAULT_SERVER_NAME]
    assert listed["data"][0]["queue"] == stack.settings.provisioning_queue_name
    assert listed["data"][0]["status"] == "active"


def test_the_list_is_paged_like_the_jobs_list_and_filters_by_status(client, operator):
    for name in ("bench-c", "bench-a", "bench-b"):
        add(client, operator, name)
    patch(client, operator, "bench-b", status="draining")
    patch(client, operator, "bench-c", status="draining")

    first = client.get(SERVERS, query_string={"size": 3}, headers=operator.headers).json
    assert [server["name"] for server in first["data"]] == ["bench-a", "bench-b", "bench-c"]
    assert first["meta"] == {"page": 1, "size": 3, "total": 4, "pages": 2}
    second = client.get(SERVERS, query_string={"size": 3, "page": 2}, headers=operator.headers).json
    assert [server["name"] for server in second["data"]] == [DEFAULT_SERVER_NAME]
    assert second["meta"] == {"page": 2, "size": 3, "total": 4, "pages": 2}

    draining = client.get(SERVERS, query_string={"status": "draining"}, headers=operator.headers).json
    assert [server["name"] for server in draining["data"]] == ["bench-b", "bench-c"]
    assert draining["meta"] == {"page": 1, "size": 20, "total": 2, "pages": 1}
    assert client.get(SERVERS, query_string={"status": "down"}, headers=operator.headers).json["meta"]["total"] == 0
    assert_error(client.get(SERVERS, query_string={"status": "broken"}, headers=operator.headers), 422)
    assert_error(client.get(SERVERS, query_string={"size": 101}, headers=operator.headers), 422)


def test_a_second_server_of_the_same_name_is_a_conflict_that_changes_nothing(client, operator):
    add(client, operator, "bench-a", capacity=3, region="eu")

    body = assert_error(client.post(SERVERS, json={"name": "bench-a", "capacity": 50}, headers=operator.headers), 409)

    assert "bench-a" in body["message"]
    kept = client.get(f"{SERVERS}/bench-a", headers=operator.headers).json["data"]
    assert (kept["capacity"], kept["labels"]) == (3, {"region": "eu"})
    assert client.get(SERVERS, headers=operator.headers).json["meta"]["total"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bench A"}, "name"),
        ({"name": "bench_a"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "b" * 64}, "name"),
        ({}, "name"),
        ({"name": "bench-a", "capacity": 0}, "capacity"),
        ({"name": "bench-a", "capacity": -5}, "capacity"),
        ({"name": "bench-a", "capacity": "many"}, "capacity"),
        ({"name": "bench-a", "capacity": 2**31}, "capacity"),
        ({"name": "bench-a", "labels": {"Region": "eu"}}, "labels"),
        ({"name": "bench-a", "labels": {"region": "EU West"}}, "labels"),
        ({"name": "bench-a", "labels": {"region": 1}}, "labels"),
        ({"name": "bench-a", "labels": ["region=eu"]}, "labels"),
        ({"name": "bench-a", "labels": {f"l{n}": "x" for n in range(MAX_LABELS + 1)}}, "labels"),
        ({"name": "bench-a", "site_count": 0}, "site_count"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_bad_server_is_refused_naming_the_field_and_nothing_is_added(client, operator, body, field):
    answer = assert_error(client.post(SERVERS, json=body, headers=operator.headers), 422)
    assert field in answer["errors"]["json"], answer
    assert client.get(SERVERS, headers=operator.headers).json["meta"]["total"] == 1


@pytest.mark.parametrize(
    "body",
    [{"capacity": 0}, {"capacity": "x"}, {"labels": {"Region": "eu"}}, {"status": "broken"}, {"name": "renamed"}],
    ids=["capacity-0", "capacity-text", "label-case", "status", "rename"],
)
def test_a_bad_change_is_refused_and_changes_nothing(client, operator, body):
    add(client, operator, "bench-a", capacity=3, region="eu")
    assert_error(client.patch(f"{SERVERS}/bench-a", json=body, headers=operator.headers), 422)
    kept = client.get(f"{SERVERS}/bench-a", headers=operator.headers).json["data"]
    assert (kept["capacity"], kept["labels"], kept["status"]) == (3, {"region": "eu"}, "active")


@pytest.mark.parametrize(("method", "body"), [("get", None), ("patch", {"capacity": 3}), ("delete", None)])
def test_an_unknown_server_is_404(client, operator, method, body):
    answer = assert_error(getattr(client, method)(f"{SERVERS}/no-such-bench", json=body, headers=operator.headers), 404)
    assert "no-such-bench" in answer["message"]


ENDPOINTS = [
    ("get", SERVERS, None),
    ("post", SERVERS, {"name": "bench-a"}),
    ("get", f"{SERVERS}/{DEFAULT_SERVER_NAME}", None),
    ("patch", f"{SERVERS}/{DEFAULT_SERVER_NAME}", {"status": "down"}),
    ("delete", f"{SERVERS}/{DEFAULT_SERVER_NAME}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_only_platform_operators_reach_the_servers(client, session, tenant_factory, operator, method, path, body):
    tenant = tenant_factory.create()
    for role in Role:
        assert_error(getattr(client, method)(path, json=body, headers=tenant.headers(role)), 403)
    assert_error(getattr(client, method)(path, json=body), 401)
    assert_error(getattr(client, method)(path, json=body, headers={"Authorization": "Bearer erpx_not-a-token"}), 401)

    # Nothing was added, changed or removed.
    servers = client.get(SERVERS, headers=operator.headers).json["data"]
    assert [(server["name"], server["status"]) for server in servers] == [(DEFAULT_SERVER_NAME, "active")]


def test_a_server_holding_sites_is_not_removed_until_its_last_site_is_gone(client, session, tenant_factory, operator):
    add(client, operator, "bench-a")
    tenant = tenant_factory.create()
    created = client.post(JOBS, json={"job_type": "create_site", "server": "bench-a"}, headers=operator.acting_for(tenant))
    assert created.status_code == 201, created.json
    assert client.get(f"{SERVERS}/bench-a", headers=operator.headers).json["data"]["site_count"] == 1

    refused = assert_error(client.delete(f"{SERVERS}/bench-a", headers=operator.headers), 409)
    assert "holds 1 site" in refused["message"]
    assert client.get(f"{SERVERS}/bench-a", headers=operator.headers).status_code == 200

    # The create is cancelled before it starts: the tenant leaves the server it was placed on.
    job_id = created.json["data"]["id"]
    assert client.post(f"{JOBS}/{job_id}/cancel", headers=tenant.headers(Role.OWNER)).json["data"]["status"] == "cancelled"
    assert client.get(f"{SERVERS}/bench-a", headers=operator.headers).json["data"]["site_count"] == 0
    assert client.delete(f"{SERVERS}/bench-a", headers=operator.headers).status_code == 200
    assert server_of(session, tenant) is None


def test_every_change_is_in_the_audit_log_with_the_operator_and_what_changed(client, session, operator):
    add(client, operator, "bench-a", capacity=4, region="eu")
    patch(client, operator, "bench-a", capacity=6, labels={"region": "us"})
    patch(client, operator, "bench-a", status="draining")
    patch(client, operator, "bench-a", status="down")
    patch(client, operator, "bench-a", status="down")  # no change, no entry
    patch(client, operator, "bench-a", status="active")
    assert client.delete(f"{SERVERS}/bench-a", headers=operator.headers).status_code == 200
    client.get(SERVERS, headers=operator.headers)  # reading is not audited

    session.expire_all()
    entries = [entry for entry in audit.entries(session) if entry.action.startswith("server.")][::-1]
    assert [(entry.action, entry.target) for entry in entries] == [
        ("server.added", "server bench-a"),
        ("server.updated", "server bench-a"),
        ("server.draining", "server bench-a"),
        ("server.down", "server bench-a"),
        ("server.active", "server bench-a"),
        ("server.removed", "server bench-a"),
    ]
    assert {entry.actor for entry in entries} == {f"user {operator.user.id}"}
    assert all(entry.ip == "127.0.0.1" for entry in entries)
    added, updated, draining, down, active, _removed = (entry.detail for entry in entries)
    assert "capacity 4" in added and "eu" in added
    assert "capacity 6" in updated and "us" in updated
    assert (draining, down, active) == ("was active", "was draining", "was down")


def test_a_refused_change_leaves_no_audit_entry(client, session, tenant_factory, operator):
    add(client, operator, "bench-a")
    tenant = tenant_factory.create()
    client.post(SERVERS, json={"name": "bench-a"}, headers=operator.headers)
    client.patch(f"{SERVERS}/bench-a", json={"status": "down"}, headers=tenant.headers(Role.OWNER))
    session.expire_all()
    assert [entry.action for entry in audit.entries(session) if entry.action.startswith("server.")] == ["server.added"]


def active_site(stack, session, tenant_factory):
    """A tenant whose site was created (by the simulated driver) on the server it was placed on."""
    tenant = tenant_factory.create()
    job = ProvisioningService(session).request_job(tenant.id, JobType.CREATE_SITE)
    session.commit()
    JobRunner.for_settings(stack.settings, stack.sessions, SimulatedDriver(0), "test-runner@localhost").run(job.id)
    session.refresh(tenant.tenant)
    assert tenant.tenant.status == TenantStatus.ACTIVE
    return tenant


def test_activating_a_down_server_sends_its_held_jobs_at_once(client, session, stack, tenant_factory, operator):
    tenant = active_site(stack, session, tenant_factory)
    patch(client, operator, DEFAULT_SERVER_NAME, status="down")

    held = client.post(JOBS, json={"job_type": "backup_site"}, headers=tenant.headers(Role.OWNER))

    assert held.status_code == 201, held.json
    job = held.json["data"]
    assert job["status"] == "pending" and job["queued"] is False
    assert job["message"].startswith(f"Held: server {DEFAULT_SERVER_NAME} is down")
    shown = client.get(f"{SERVERS}/{DEFAULT_SERVER_NAME}", headers=operator.headers).json["data"]
    assert (shown["site_count"], shown["active_jobs"]) == (1, 1)
    assert queue_depths(stack.settings)[stack.settings.provisioning_queue_name] in (None, 0)

    patch(client, operator, DEFAULT_SERVER_NAME, status="active")

    sent = client.get(f"{JOBS}/{job['id']}", headers=tenant.headers(Role.OWNER)).json["data"]
    assert sent["queued"] is True and not sent["message"].startswith("Held"), sent
    assert queue_depths(stack.settings)[stack.settings.provisioning_queue_name] == 1


# Placement, as API clients ask for it.


def test_an_operator_pins_a_site_to_a_server_and_a_tenant_owner_may_not(client, session, tenant_factory, operator):
    add(client, operator, "bench-a")
    add(client, operator, "bench-b")
    tenant = tenant_factory.create()

    refused = assert_error(
        client.post(JOBS, json={"job_type": "create_site", "server": "bench-b"}, headers=tenant.headers(Role.OWNER)), 403
    )

    assert "operators" in refused["message"]
    assert server_of(session, tenant) is None
    assert client.get(JOBS, headers=tenant.headers(Role.OWNER)).json["meta"]["total"] == 0
    pinned = client.post(JOBS, json={"job_type": "create_site", "server": "bench-b"}, headers=operator.acting_for(tenant))
    assert pinned.status_code == 201, pinned.json
    assert server_of(session, tenant) == "bench-b"


def test_a_create_pinned_to_another_server_than_the_failed_tenants_own_is_refused(client, session, tenant_factory, operator):
    add(client, operator, "bench-a")
    add(client, operator, "bench-b")
    tenant = tenant_factory.create()
    created = client.post(JOBS, json={"job_type": "create_site", "server": "bench-a"}, headers=operator.acting_for(tenant))
    assert created.status_code == 201, created.json
    session.execute(update(ProvisioningJob).where(ProvisioningJob.id == created.json["data"]["id"]).values(
        status=JobStatus.FAILED))  # fmt: skip
    session.execute(update(Tenant).where(Tenant.id == tenant.id).values(status=TenantStatus.FAILED))
    session.commit()

    refused = assert_error(
        client.post(JOBS, json={"job_type": "create_site", "server": "bench-b"}, headers=operator.acting_for(tenant)), 409
    )
    assert "is on server bench-a already" in refused["message"] and "move_site moves it" in refused["message"]
    again = client.post(JOBS, json={"job_type": "create_site", "server": "bench-a"}, headers=operator.acting_for(tenant))
    assert again.status_code == 201, again.json


# Labels on any job but a create; a server on any job but a create or a move (which names where to).
# (No client asks for refill_pool: see the test after.)
PLACEMENTS_THAT_FIT_NOT = [
    (job_type, placement)
    for placement in ({"labels": {"region": "eu"}}, {"server": "bench-a"})
    for job_type in JobType
    if job_type not in (JobType.CREATE_SITE, JobType.REFILL_POOL)
    and not (job_type == JobType.MOVE_SITE and "server" in placement)
]


@pytest.mark.parametrize(("job_type", "placement"), PLACEMENTS_THAT_FIT_NOT)
def test_placement_options_on_a_job_that_places_nothing_are_refused(client, tenant_factory, operator, job_type, placement):
    tenant = tenant_factory.create(TenantStatus.ACTIVE)
    body = {"job_type": job_type.value, **placement}
    if job_type == JobType.RESTORE_SITE:
        body["backup_id"] = str(uuid.uuid4())
    answer = assert_error(client.post(JOBS, json=body, headers=operator.acting_for(tenant)), 422)
    assert set(placement) <= set(answer["errors"]["json"]), answer


def test_a_standby_pools_job_is_the_sweepers_and_no_client_may_ask_for_it(client, tenant_factory, operator):
    tenant = tenant_factory.create(TenantStatus.ACTIVE)
    for headers in (tenant.headers(), operator.acting_for(tenant)):
        answer = assert_error(client.post(JOBS, json={"job_type": "refill_pool"}, headers=headers), 422)
        assert answer["errors"]["json"]["job_type"] == ["refill_pool jobs are the sweeper's, for standby pools"]


def test_a_create_asking_for_labels_no_server_has_is_refused_naming_them(client, session, tenant_factory, operator):
    add(client, operator, "bench-eu", region="eu", plan="small")
    tenant = tenant_factory.create()

    refused = assert_error(
        client.post(
            JOBS, json={"job_type": "create_site", "labels": {"region": "eu", "plan": "large"}}, headers=tenant.headers()
        ),
        409,
    )

    assert "plan=large" in refused["message"] and "region=eu" in refused["message"], refused
    assert client.get(JOBS, headers=tenant.headers()).json["meta"]["total"] == 0
    assert server_of(session, tenant) is None
    placed = client.post(JOBS, json={"job_type": "create_site", "labels": {"plan": "small"}}, headers=tenant.headers())
    assert placed.status_code == 201, placed.json
    assert server_of(session, tenant) == "bench-eu"


def test_a_create_when_every_server_is_full_is_refused_not_left_pending(client, session, tenant_factory, operator):
    patch(client, operator, DEFAULT_SERVER_NAME, capacity=1)
    add(client, operator, "bench-a", capacity=1)
    add(client, operator, "bench-b", capacity=5)
    patch(client, operator, "bench-b", status="draining")
    first, second, third = (tenant_factory.create() for _ in range(3))
    for tenant in (first, second):
        assert client.post(JOBS, json={"job_type": "create_site"}, headers=tenant.headers()).status_code == 201

    refused = assert_error(client.post(JOBS, json={"job_type": "create_site"}, headers=third.headers()), 409)

    assert "no active server" in refused["message"] and "room" in refused["message"], refused
    assert client.get(JOBS, headers=third.headers()).json["meta"]["total"] == 0
    assert server_of(session, third) is None
    # Room is made: the same request now goes through.
    patch(client, operator, "bench-b", status="active")
    assert client.post(JOBS, json={"job_type": "create_site"}, headers=third.headers()).status_code == 201
    assert server_of(session, third) == "bench-b"


@pytest.mark.parametrize(
    ("pin", "status", "code"), [("bench-a", "draining", 409), ("bench-a", "down", 409), ("nowhere", None, 404)]
)
def test_a_pin_to_a_server_that_cannot_take_the_site_is_refused(client, session, tenant_factory, operator, pin, status, code):
    add(client, operator, "bench-a")
    if status:
        patch(client, operator, "bench-a", status=status)
    tenant = tenant_factory.create()

    refused = assert_error(
        client.post(JOBS, json={"job_type": "create_site", "server": pin}, headers=operator.acting_for(tenant)), code
    )

    assert pin in refused["message"]
    assert server_of(session, tenant) is None
    assert session.scalar(select(ProvisioningJob.id).where(ProvisioningJob.tenant_id == tenant.id)) is None


def test_a_job_the_tenant_cannot_have_is_refused_for_that_reason_even_with_no_room_anywhere(
    client, session, tenant_factory, operator
):
    patch(client, operator, DEFAULT_SERVER_NAME, status="draining")
    tenant = tenant_factory.create()  # pending: it has no site, and no server

    refused = assert_error(client.post(JOBS, json={"job_type": "backup_site"}, headers=tenant.headers()), 409)

    assert "backup_site needs an active or suspended tenant" in refused["message"], refused
    assert server_of(session, tenant) is None
    assert ProvisioningService(session).list_jobs(tenant.id, 1, 20)[1] == 0
