"""Placement: which bench server a tenant's site goes to when its first create is asked for, and
that requests at the same moment never put more sites on a server than its capacity. Each test
has a database of its own (``isolated``): it adds, drains and fills servers as it likes.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
from sqlalchemy import create_engine, func, pool, select
from sqlalchemy.orm import Session

from provisioning.accounts.audit import SYSTEM
from provisioning.enums import JobStatus, JobType, ServerStatus, TenantStatus
from provisioning.errors import Conflict, NotFound
from provisioning.jobs.runner import JobRunner
from provisioning.jobs.service import ProvisioningService
from provisioning.models import ProvisioningJob, Server, Tenant
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from provisioning.servers.registry import ServerRegistry
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.factories import TenantFactory
from tests.helpers import committing


@pytest.fixture
def session(isolated):
    with isolated.sessions() as session:
        yield session


@pytest.fixture
def sent() -> list[tuple[uuid.UUID, str]]:
    """(job id, server name) of each job published, in order."""
    return []


@pytest.fixture
def fleet(session):
    """Makes the servers a test asks for; the default server is drained, so only they take sites."""

    def make(**capacities: int) -> ServerRegistry:
        registry = ServerRegistry(session, SYSTEM)
        registry.set_status(DEFAULT_SERVER_NAME, ServerStatus.DRAINING)
        for name, capacity in capacities.items():
            registry.add(name.replace("_", "-"), capacity)
        session.commit()
        return registry

    return make


def create(session, sent, tenant, **options) -> ProvisioningJob:
    """Ask for the tenant's create_site, committed and published (noted in ``sent``)."""
    return committing(session, dispatch=lambda job_id, server: sent.append((job_id, server))).request_job(
        tenant.id, JobType.CREATE_SITE, options=options
    )


def server_of(session, tenant) -> str | None:
    session.expire_all()
    return session.scalar(select(Server.name).join(Tenant, Tenant.server_id == Server.id).where(Tenant.id == tenant.id))


def site_counts(session) -> dict[str, int]:
    """Each server's ``site_count``, as the trigger keeps it."""
    session.expire_all()
    return {name: count for name, count in session.execute(select(Server.name, Server.site_count))}


def placed_tenants(session) -> dict[str, int]:
    """The tenants each server really holds, counted."""
    counted = select(Server.name, func.count(Tenant.id)).outerjoin(Tenant, Tenant.server_id == Server.id).group_by(Server.name)
    return {name: count for name, count in session.execute(counted)}


def assert_refused_leaving_nothing(session, tenant) -> None:
    assert server_of(session, tenant) is None
    assert session.scalar(select(func.count()).select_from(ProvisioningJob).where(ProvisioningJob.tenant_id == tenant.id)) == 0


def test_a_site_goes_to_the_active_server_with_the_fewest_sites(session, fleet, sent):
    fleet(bench_a=10, bench_b=10, bench_c=10)
    tenants = TenantFactory(session)
    for pin in ("bench-a", "bench-a", "bench-b"):
        create(session, sent, tenants.create(), server=pin)
    newcomers = [tenants.create() for _ in range(3)]

    for tenant in newcomers:
        create(session, sent, tenant)

    # c (0 sites); then b and c tie at 1: by name, b; then c, the emptiest again.
    assert [server_of(session, tenant) for tenant in newcomers] == ["bench-c", "bench-b", "bench-c"]
    # Each job is sent to the queue of the server its tenant is on.
    assert [server for _job, server in sent] == ["bench-a", "bench-a", "bench-b", "bench-c", "bench-b", "bench-c"]
    assert site_counts(session) == {DEFAULT_SERVER_NAME: 0, "bench-a": 2, "bench-b": 2, "bench-c": 2}
    assert placed_tenants(session) == site_counts(session)


def test_draining_down_and_full_servers_take_no_new_sites(session, fleet, sent):
    registry = fleet(bench_a=10, bench_b=1, bench_c=10, bench_d=10)
    tenants = TenantFactory(session)
    create(session, sent, tenants.create(), server="bench-b")  # b is full
    for _ in range(3):
        create(session, sent, tenants.create(), server="bench-c")
    registry.set_status("bench-a", ServerStatus.DOWN)
    registry.set_status("bench-d", ServerStatus.DRAINING)
    session.commit()
    newcomer = tenants.create()

    create(session, sent, newcomer)

    # a, d and the default server are empty, but down or draining; b is full: c, with 3 sites, takes it.
    assert server_of(session, newcomer) == "bench-c"

    # A capacity lowered below a server's sites is allowed: it takes no new ones.
    registry.update("bench-c", capacity=2)
    session.commit()
    refused = tenants.create()
    with pytest.raises(Conflict, match="no active server has room"):
        create(session, sent, refused)
    assert_refused_leaving_nothing(session, refused)
    assert site_counts(session) == {DEFAULT_SERVER_NAME: 0, "bench-a": 0, "bench-b": 1, "bench-c": 4, "bench-d": 0}


def test_a_site_asking_for_labels_goes_only_to_a_server_with_all_of_them(session, fleet, sent):
    registry = fleet(bench_a=10, bench_b=10, bench_c=10)
    registry.update("bench-a", labels={"region": "eu", "plan": "small"})
    registry.update("bench-b", labels={"region": "eu", "plan": "large"})
    registry.update("bench-c", labels={"region": "us", "plan": "large"})
    registry.set_status(DEFAULT_SERVER_NAME, ServerStatus.ACTIVE)  # no labels: only sites that ask for none go there
    session.commit()
    tenants = TenantFactory(session)

    def placed(**labels) -> str | None:
        tenant = tenants.create()
        create(session, sent, tenant, labels=labels)
        return server_of(session, tenant)

    assert placed(region="eu", plan="large") == "bench-b"
    assert placed(plan="large") == "bench-c"  # b and c have the plan; c has fewer sites
    assert placed(region="eu") == "bench-a"
    assert placed() == DEFAULT_SERVER_NAME
    for wanted, named in (({"region": "ap"}, "region=ap"), ({"region": "us", "plan": "small"}, "plan=small, region=us")):
        tenant = tenants.create()
        with pytest.raises(Conflict, match=f"with labels {named} has room"):
            create(session, sent, tenant, labels=wanted)
        assert_refused_leaving_nothing(session, tenant)


def test_an_operators_pin_is_honoured_if_that_server_can_take_the_site(session, fleet, sent):
    registry = fleet(bench_a=10, bench_b=1, bench_c=10, bench_d=10, bench_e=10)
    tenants = TenantFactory(session)
    for _ in range(3):
        create(session, sent, tenants.create(), server="bench-a")
    create(session, sent, tenants.create(), server="bench-b")
    registry.set_status("bench-c", ServerStatus.DRAINING)
    registry.set_status("bench-d", ServerStatus.DOWN)
    session.commit()

    # a is not the emptiest (e is): the operator's choice wins.
    pinned = tenants.create()
    create(session, sent, pinned, server="bench-a")
    assert server_of(session, pinned) == "bench-a"

    for pin, why in (("bench-b", Conflict), ("bench-c", Conflict), ("bench-d", Conflict), ("nowhere", NotFound)):
        tenant = tenants.create()
        with pytest.raises(why, match=pin):
            create(session, sent, tenant, server=pin)
        assert_refused_leaving_nothing(session, tenant)
    assert site_counts(session)["bench-a"] == 4


def runner(isolated, **driver) -> JobRunner:
    return JobRunner.for_settings(isolated.settings, isolated.sessions, SimulatedDriver(0, **driver), "test-runner@localhost")


def test_a_tenant_leaves_its_server_when_its_site_is_deleted_or_its_create_cancelled(isolated, session, fleet, sent):
    registry = fleet(bench_a=10, bench_b=10)
    tenants = TenantFactory(session)
    deleted = tenants.create()
    runner(isolated).run(create(session, sent, deleted, server="bench-a").id)
    assert (site_counts(session)["bench-a"], server_of(session, deleted)) == (1, "bench-a")

    delete = committing(session, dispatch=lambda *_: None).request_job(deleted.id, JobType.DELETE_SITE)
    runner(isolated).run(delete.id)

    session.expire_all()
    assert session.get(Tenant, deleted.id).status == TenantStatus.DELETED
    assert server_of(session, deleted) is None
    assert site_counts(session)["bench-a"] == 0

    # A create cancelled before it started: the tenant, still without a site, leaves too, and
    # its next create is placed again, where there is room now.
    cancelled = tenants.create()
    job = create(session, sent, cancelled, server="bench-a")
    assert site_counts(session)["bench-a"] == 1
    committing(session).cancel_job(cancelled.id, job.id)
    assert server_of(session, cancelled) is None
    assert site_counts(session)["bench-a"] == 0
    registry.set_status("bench-a", ServerStatus.DRAINING)
    session.commit()
    create(session, sent, cancelled)
    assert server_of(session, cancelled) == "bench-b"
    assert placed_tenants(session) == site_counts(session)


def test_a_failed_create_keeps_its_server_and_its_retry_goes_there_even_once_it_is_draining(isolated, session, fleet, sent):
    registry = fleet(bench_a=10, bench_b=10)
    tenant = TenantFactory(session).create()
    failed = create(session, sent, tenant, server="bench-a")
    runner(isolated, fail_step="install_apps").run(failed.id)
    session.expire_all()
    assert session.get(ProvisioningJob, failed.id).status == JobStatus.FAILED
    registry.set_status("bench-a", ServerStatus.DRAINING)
    session.commit()

    retry = committing(session, dispatch=lambda job_id, server: sent.append((job_id, server))).retry_job(tenant.id, failed.id)

    # What the failed create left is on bench-a: its retry runs there, not on the emptier bench-b.
    assert server_of(session, tenant) == "bench-a"
    assert sent[-1] == (retry.id, "bench-a")
    assert site_counts(session) == {DEFAULT_SERVER_NAME: 0, "bench-a": 1, "bench-b": 0}


def at_once(isolated, calls: list) -> list:
    """Run each call in a thread of its own, on a session (and connection) of its own, all let
    go together; returns what each returned or raised, in order."""
    engine = create_engine(isolated.settings.database_url, poolclass=pool.NullPool)
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index: int, call) -> None:
        with Session(engine, expire_on_commit=False) as session:
            session.connection()  # connected before the start, so that all start together
            barrier.wait(timeout=30)
            try:
                results[index] = call(session)
            except Exception as error:  # noqa: BLE001 - the result to check
                session.rollback()
                results[index] = error

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_creates_at_once_never_put_more_sites_on_a_server_than_its_capacity(isolated, session, fleet, sent):
    capacities = {"bench-a": 3, "bench-b": 5, "bench-c": 4}
    fleet(**{name.replace("-", "_"): capacity for name, capacity in capacities.items()})
    tenants = [TenantFactory(session).create() for _ in range(2 * sum(capacities.values()))]

    def creating(tenant):
        def call(own: Session) -> ProvisioningJob:
            service = ProvisioningService(own, dispatch=lambda job_id, server: sent.append((job_id, server)))
            job = service.request_job(tenant.id, JobType.CREATE_SITE)
            service.uow.commit()
            return job

        return call

    results = at_once(isolated, [creating(tenant) for tenant in tenants])

    jobs = [result for result in results if isinstance(result, ProvisioningJob)]
    refusals = [result for result in results if not isinstance(result, ProvisioningJob)]
    assert len(jobs) == sum(capacities.values()), refusals
    assert all(isinstance(refusal, Conflict) and "no active server has room" in str(refusal) for refusal in refusals), refusals
    counts = site_counts(session)
    assert counts == {DEFAULT_SERVER_NAME: 0, **capacities}
    assert placed_tenants(session) == counts
    # Every job went to the queue of the server its tenant is on, and every refused tenant is on none.
    placed = {tenant.id: server_of(session, tenant) for tenant in tenants}
    owner = {job.id: job.tenant_id for job in jobs}
    assert sorted((owner[job_id], server) for job_id, server in sent) == sorted(
        (tenant_id, server) for tenant_id, server in placed.items() if server is not None
    )
    assert Counter(server for server in placed.values()) == {None: len(refusals), **capacities}


def test_two_creates_of_one_tenant_at_once_place_it_once(isolated, session, fleet, sent):
    fleet(bench_a=10, bench_b=10)
    tenant = TenantFactory(session).create()

    def call(own: Session):
        service = ProvisioningService(own, dispatch=lambda job_id, server: sent.append((job_id, server)))
        job = service.request_job(tenant.id, JobType.CREATE_SITE)
        service.uow.commit()
        return job

    results = at_once(isolated, [call] * 4)

    jobs = [result for result in results if isinstance(result, ProvisioningJob)]
    assert len(jobs) == 1, results
    refusals = [result for result in results if result not in jobs]
    assert all(isinstance(refusal, Conflict) and "active job" in str(refusal) for refusal in refusals), refusals
    assert sum(site_counts(session).values()) == 1
    assert placed_tenants(session) == site_counts(session)
    assert sent == [(jobs[0].id, server_of(session, tenant))]
