"""Standby pools on fake benches, with real worker processes and the sweeper's refills, on
PostgreSQL and RabbitMQ: a pool filled and kept full, creates that claim a standby site instead of
making one, and what happens when a claim races, fails, is cut short or finds a stale site."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

from click.testing import CliRunner
from sqlalchemy import select, update

from api import create_app
from provisioning.accounts.audit import SYSTEM
from provisioning.cli import main
from provisioning.enums import JobStatus, JobType, StandbyStatus, StepStatus, TenantStatus
from provisioning.jobs.workflows import STANDBY
from provisioning.models import ProvisioningJob, Server, StandbySite
from provisioning.operations.health import check_standby_pools
from provisioning.operations.schedules import POOL_CHECK_EVERY, POOL_RETRY_AFTER
from provisioning.operations.sweeper import sweep
from provisioning.platform.db import utcnow
from provisioning.servers.registry import ServerRegistry
from provisioning.servers.standby import CLAIM_RETRY_GRACE
from provisioning.sites.credentials import SiteCredentials
from tests.factories import TenantFactory, operator_headers
from tests.fleet import DOMAIN, BenchServer, fleet
from tests.helpers import committing, wait_for
from tests.integration.test_moves import finished, in_step, reaped, request, retried
from tests.integration.test_server_metrics import of, scrape
from tests.pools import pool_job_under_way, refilled
from tests.records import read_job, read_steps, read_tenant


def with_pool(isolated, server: str, size: int, batch: int = 5) -> None:
    with isolated.session() as session:
        ServerRegistry(session, SYSTEM).update(server, standby_pool_size=size, standby_batch=batch)
        session.commit()


def one_ready_standby(isolated, server: BenchServer, **fault: str) -> str:
    """The label of the one standby site of ``server``'s pool, made; its worker then restarted
    with ``fault`` (``FAKE_BENCH_HANG="new-site"``: its bench hangs there)."""
    with_pool(isolated, server.name, size=1)
    refilled(isolated)
    [label] = ready(isolated)
    server.worker.kill()
    server.start_worker(isolated.dispatcher, **fault)
    return label


def claim_hanging_in_bench(isolated, server: BenchServer, session, tmp_path):
    """The label of a pool's one standby site, a tenant, and its create claiming that site, its
    bench's set-admin-password hanging (the claim has begun: the site is the create's to rename)."""
    hanging = tmp_path / "hanging.pid"
    label = one_ready_standby(isolated, server, FAKE_BENCH_HANG="set-admin-password", FAKE_BENCH_PID_FILE=str(hanging))
    tenant = TenantFactory(session).create()
    create = request(isolated, session, tenant, JobType.CREATE_SITE)
    wait_for(hanging.exists, timeout=30, what="the claim's set-admin-password to hang")
    return label, tenant, create


def standbys(isolated) -> dict[str, StandbyStatus]:
    with isolated.session() as session:
        return dict(session.execute(select(StandbySite.label, StandbySite.status)).all())


def ready(isolated) -> list[str]:
    """The ready standby sites, oldest first: the order creates take them in."""
    with isolated.session() as session:
        return list(
            session.scalars(
                select(StandbySite.label).where(StandbySite.status == StandbyStatus.READY)
                .order_by(StandbySite.ready_at, StandbySite.label)
            )
        )  # fmt: skip


def standby_dir(server: BenchServer, label: str):
    return server.bench / "sites" / f"{label}.standby.{DOMAIN}"


def site_count(isolated, name: str) -> int:
    with isolated.session() as session:
        return session.scalar(select(Server.site_count).where(Server.name == name))


def bench_calls(server: BenchServer) -> list[list[str]]:
    log = server.bench.parent / "calls.log"
    return [json.loads(line)[1:] for line in log.read_text().splitlines()] if log.exists() else []


def logged(name: str, tmp_path) -> dict[str, dict[str, str]]:
    """Each server's fake bench records its calls beside it."""
    return {name: {"FAKE_BENCH_LOG": str(tmp_path / name / "calls.log")}}


def steps_of(isolated, job_id) -> dict[str, tuple[StepStatus, str]]:
    return {step.name: (step.status, step.message + "\n" + step.output) for step in read_steps(isolated.sessions, job_id)}


def test_the_sweeper_fills_a_pool_and_a_create_claims_a_standby_site_instead_of_making_one(isolated, tmp_path):
    with fleet(isolated, tmp_path, ("a",), capacity=5, extra_of=logged("a", tmp_path)) as servers, isolated.session() as session:
        server = servers["a"]
        with_pool(isolated, "a", size=2)
        [pool_job] = refilled(isolated)
        assert pool_job.status == JobStatus.COMPLETED, pool_job.error
        labels = ready(isolated)
        assert len(labels) == 2 and all(standby_dir(server, label).is_dir() for label in labels)
        # Made with every app, scheduler enabled but paused: an idle standby site runs no jobs.
        config = json.loads((standby_dir(server, labels[0]) / "site_config.json").read_text())
        assert config["pause_scheduler"] == 1
        assert site_count(isolated, "a") == 2  # standby sites take room
        assert refilled(isolated) == []  # full: nothing more to ask for

        tenant = TenantFactory(session).create()
        create = request(isolated, session, tenant, JobType.CREATE_SITE)
        assert create.options[STANDBY] == labels[0]  # the oldest ready one, reserved with the request
        calls_before = len(bench_calls(server))
        done = finished(isolated, create.id)

        assert done.status == JobStatus.COMPLETED, done.error
        steps = steps_of(isolated, create.id)
        assert steps["claim_standby"][0] == StepStatus.COMPLETED and f"{labels[0]}.standby" in steps["claim_standby"][1]
        for made_by_the_claim in ("create_site", "install_apps", "configure_site", "verify_site"):
            assert steps[made_by_the_claim] == (
                StepStatus.SKIPPED,
                "Skipped: the site is the standby site claimed by claim_standby\n",
            )
        assert [call[0] for call in bench_calls(server)[calls_before:] if call[0] == "new-site"] == []
        slug = tenant.tenant.slug
        assert server.holds(slug) and not standby_dir(server, labels[0]).exists()
        config = server.site_config(slug)
        assert config["host_name"] == f"https://{slug}.{DOMAIN}" and config["pause_scheduler"] == 0
        # The site's Administrator password is the tenant's own, set by the claim, stored encrypted.
        stored = read_tenant(isolated.sessions, tenant.id).admin_password_encrypted
        database = server.bench / "fake-mariadb" / config["db_name"]
        assert (database / "administrator_password").read_text() == SiteCredentials(
            isolated.settings.site_credentials_key
        ).decrypt(stored)
        assert read_tenant(isolated.sessions, tenant.id).status == TenantStatus.ACTIVE
        assert standbys(isolated)[labels[0]] == StandbyStatus.CLAIMED
        assert site_count(isolated, "a") == 2  # the tenant's site, and the standby site left

        [refill] = refilled(isolated)  # the sweeper makes up for the claimed one
        assert refill.status == JobStatus.COMPLETED and len(ready(isolated)) == 2
        assert site_count(isolated, "a") == 3


def test_two_creates_never_claim_the_same_standby_site_and_one_without_any_makes_its_site(isolated, tmp_path):
    with fleet(isolated, tmp_path, ("a",), capacity=6) as servers, isolated.session() as session:
        with_pool(isolated, "a", size=2)
        refilled(isolated)
        labels = ready(isolated)
        tenants = [TenantFactory(session).create() for _ in range(3)]
        created, start = {}, threading.Barrier(3)

        def ask(tenant):
            with isolated.session() as own:
                start.wait()
                created[tenant.id] = request(isolated, own, tenant, JobType.CREATE_SITE)

        threads = [threading.Thread(target=ask, args=(tenant,)) for tenant in tenants]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        reserved = [job.options.get(STANDBY) for job in created.values()]
        assert sorted(filter(None, reserved)) == sorted(labels) and len(set(filter(None, reserved))) == 2
        assert reserved.count(None) == 1
        for tenant in tenants:
            assert finished(isolated, created[tenant.id].id).status == JobStatus.COMPLETED
            assert servers["a"].holds(tenant.tenant.slug)
        made = next(job for job in created.values() if STANDBY not in job.options)
        assert steps_of(isolated, made.id)["create_site"][0] == StepStatus.COMPLETED
        assert sorted(standbys(isolated).values()) == [StandbyStatus.CLAIMED, StandbyStatus.CLAIMED]
        assert site_count(isolated, "a") == 3


def test_a_claim_that_fails_puts_the_standby_site_back_and_the_create_makes_the_site(isolated, tmp_path):
    failing = {"a": {"FAKE_BENCH_FAIL": "set-admin-password"}}
    with fleet(isolated, tmp_path, ("a",), capacity=5, extra_of=failing) as servers, isolated.session() as session:
        with_pool(isolated, "a", size=1)
        refilled(isolated)
        [label] = ready(isolated)
        tenant = TenantFactory(session).create()
        done = finished(isolated, request(isolated, session, tenant, JobType.CREATE_SITE).id)

        assert done.status == JobStatus.COMPLETED, done.error
        steps = steps_of(isolated, done.id)
        assert steps["claim_standby"][0] == StepStatus.COMPLETED
        assert f"the claim of {label} failed" in steps["claim_standby"][1]
        assert steps["create_site"][0] == StepStatus.COMPLETED  # made with new-site after all
        assert servers["a"].holds(tenant.tenant.slug)
        # Never half renamed: still under its standby name, given up, and dropped by the next refill.
        assert standby_dir(servers["a"], label).is_dir() and standbys(isolated)[label] == StandbyStatus.DISCARDED
        assert read_job(isolated.sessions, done.id).options.get(STANDBY) is None  # a retry would make the site too
        servers["a"].worker.kill()
        servers["a"].start_worker(isolated.dispatcher, FAKE_BENCH_FAIL="")
        refilled(isolated)
        assert not standby_dir(servers["a"], label).exists() and standbys(isolated)[label] == StandbyStatus.DROPPED
        assert len(ready(isolated)) == 1


def test_a_claim_cut_short_by_a_killed_worker_leaves_no_half_renamed_site_and_its_retry_claims_it(isolated, tmp_path):
    with fleet(isolated, tmp_path, ("a",), capacity=5) as servers, isolated.session() as session:
        label, tenant, create = claim_hanging_in_bench(isolated, servers["a"], session, tmp_path)
        servers["a"].worker.kill()

        failed = reaped(isolated, create.id)
        assert "during step claim_standby" in failed.error
        assert standby_dir(servers["a"], label).is_dir() and not servers["a"].holds(tenant.tenant.slug)
        assert read_tenant(isolated.sessions, tenant.id).status == TenantStatus.FAILED

        servers["a"].start_worker(isolated.dispatcher, FAKE_BENCH_HANG="")
        refilled(isolated)  # the pool keeps it for the retry meanwhile
        assert standbys(isolated)[label] == StandbyStatus.CLAIMING and standby_dir(servers["a"], label).is_dir()
        retry = retried(isolated, session, create.id)
        assert retry.resume_from == "claim_standby"
        done = finished(isolated, retry.id)
        assert done.status == JobStatus.COMPLETED, done.error
        assert steps_of(isolated, retry.id)["create_site"][0] == StepStatus.SKIPPED  # the claim, resumed, made it
        assert servers["a"].holds(tenant.tenant.slug) and not standby_dir(servers["a"], label).exists()
        assert standbys(isolated)[label] == StandbyStatus.CLAIMED


def test_a_stale_standby_site_is_never_handed_out_and_the_pool_drops_and_remakes_it(isolated, tmp_path):
    with fleet(isolated, tmp_path, ("a",), capacity=5) as servers, isolated.session() as session:
        with_pool(isolated, "a", size=1)
        refilled(isolated)
        [stale] = ready(isolated)
        # The bench's ERPNext is upgraded: a site made before it is stale.
        (servers["a"].bench / "apps" / "erpnext" / "erpnext" / "__init__.py").write_text('__version__ = "15.71.0"\n')
        tenant = TenantFactory(session).create()
        done = finished(isolated, request(isolated, session, tenant, JobType.CREATE_SITE).id)

        assert done.status == JobStatus.COMPLETED, done.error
        steps = steps_of(isolated, done.id)
        assert f"{stale} is stale" in steps["claim_standby"][1] and "erpnext 15.71.0" in steps["claim_standby"][1]
        assert steps["create_site"][0] == StepStatus.COMPLETED
        assert standbys(isolated)[stale] == StandbyStatus.DISCARDED

        refilled(isolated)
        assert not standby_dir(servers["a"], stale).exists() and standbys(isolated)[stale] == StandbyStatus.DROPPED
        [fresh] = ready(isolated)
        with isolated.session() as check:
            assert "erpnext 15.71.0" in check.scalar(select(StandbySite.fingerprint).where(StandbySite.label == fresh))

        # Upgraded again: no create has to find out. The pool's hourly job drops it and makes another.
        (servers["a"].bench / "apps" / "erpnext" / "erpnext" / "__init__.py").write_text('__version__ = "15.72.0"\n')
        assert refilled(isolated) == []  # its last job was less than POOL_CHECK_EVERY ago
        with isolated.session() as backdate:
            backdate.execute(update(ProvisioningJob).where(ProvisioningJob.job_type == JobType.REFILL_POOL)
                             .values(created_at=utcnow() - POOL_CHECK_EVERY - timedelta(minutes=1)))  # fmt: skip
            backdate.commit()
        [check] = refilled(isolated)
        assert f"{fresh} (stale" in steps_of(isolated, check.id)["drop_standbys"][1]
        assert standbys(isolated)[fresh] == StandbyStatus.DROPPED and len(ready(isolated)) == 1


def test_a_pool_job_cancelled_while_it_makes_a_site_drops_it_and_keeps_the_ready_ones(isolated, tmp_path):
    with fleet(isolated, tmp_path, ("a",), capacity=5) as servers, isolated.session() as session:
        kept = one_ready_standby(isolated, servers["a"], FAKE_BENCH_HANG="new-site")
        with_pool(isolated, "a", size=2)
        sweep(isolated.settings, isolated.sessions, isolated.dispatcher.send_job)  # or the new worker's own, at its start
        pool_job = wait_for(lambda: pool_job_under_way(isolated), timeout=30, what="the pool's job")
        in_step(isolated, pool_job, "make_standbys")
        committing(session).cancel_job(read_job(isolated.sessions, pool_job).tenant_id, pool_job)
        done = finished(isolated, pool_job)

        assert done.status == JobStatus.CANCELLED
        half_made = next(label for label, status in standbys(isolated).items() if label != kept)
        assert standbys(isolated) == {kept: StandbyStatus.READY, half_made: StandbyStatus.DROPPED}
        assert not standby_dir(servers["a"], half_made).exists() and standby_dir(servers["a"], kept).is_dir()
        assert site_count(isolated, "a") == 1


def test_a_pool_never_takes_the_last_free_room_and_a_cancelled_create_gives_its_standby_site_back(isolated, tmp_path):
    with fleet(isolated, tmp_path, ("a",), capacity=3) as servers, isolated.session() as session:
        with_pool(isolated, "a", size=5)
        refilled(isolated)
        assert len(ready(isolated)) == 2 and site_count(isolated, "a") == 2  # one room left for a tenant
        assert refilled(isolated) == []

        servers["a"].worker.kill()  # no worker: the create stays pending
        tenant = TenantFactory(session).create()
        create = request(isolated, session, tenant, JobType.CREATE_SITE)
        assert len(ready(isolated)) == 1
        committing(session).cancel_job(tenant.id, create.id)
        assert len(ready(isolated)) == 2 and site_count(isolated, "a") == 2


def test_operators_set_a_pool_through_the_api_and_see_it_in_the_server_metrics_the_doctor_and_the_jobs_list(isolated, tmp_path):
    client = create_app(isolated.settings).test_client()
    with fleet(isolated, tmp_path, ("a",), capacity=5), isolated.session() as session:
        operator = operator_headers(session)
        session.commit()
        changed = client.patch("/api/v1/servers/a", json={"standby_pool_size": 2, "standby_batch": 1}, headers=operator)
        assert changed.status_code == 200, changed.json
        assert (changed.json["data"]["standby_pool_size"], changed.json["data"]["standby_batch"]) == (2, 1)
        refused = client.patch("/api/v1/servers/a", json={"standby_pool_size": -1}, headers=operator)
        assert refused.status_code == 422
        [first] = refilled(isolated)  # one at a time: the batch
        refilled(isolated)
        tenant = TenantFactory(session).create()
        assert finished(isolated, request(isolated, session, tenant, JobType.CREATE_SITE).id).status == JobStatus.COMPLETED

        shown = client.get("/api/v1/servers/a", headers=operator).json["data"]
        assert (shown["standby_ready"], shown["standby_making"], shown["site_count"]) == (1, 0, 2)
        samples = scrape(client)
        assert of(samples, "erpmax_standby_sites", server="a", status="ready") == 1
        assert of(samples, "erpmax_standby_sites", server="a", status="making") == 0
        assert of(samples, "erpmax_standby_pool_size", server="a") == 2
        assert of(samples, "erpmax_standby_claims_last_hour", server="a") == 1
        check = check_standby_pools(isolated.settings)
        assert check.ok and "a: 1/2 ready, 0 making, 0 to drop, 1 claimed in the last hour" in check.detail
        # The pool's jobs are operators' to see, with the console's jobs list; no tenant has them.
        listed = CliRunner().invoke(main, ["jobs", "list", "--type", "refill_pool"], env=isolated.environment)
        assert listed.exit_code == 0 and f"{first.id}\tpool." in listed.output
        own_jobs = client.get("/api/v1/provisioning/jobs", headers=tenant.headers()).json["data"]
        assert [job["job_type"] for job in own_jobs] == ["create_site"]

        with_pool(isolated, "a", size=0)  # off: the next refill drops what is left
        refilled(isolated)
        assert ready(isolated) == [] and site_count(isolated, "a") == 1
        assert check_standby_pools(isolated.settings).ok


def test_a_pool_whose_job_fails_waits_before_the_next_says_so_in_the_doctor_and_its_server_can_be_removed(
    isolated, tmp_path
):
    failing = {"b": {"FAKE_BENCH_FAIL": "new-site"}}
    with fleet(isolated, tmp_path, ("b",), capacity=5, extra_of=failing) as servers:
        with_pool(isolated, "b", size=1)
        [failed] = refilled(isolated)
        assert failed.status == JobStatus.FAILED and "step make_standbys failed" in failed.error
        # Not one failed job a sweep: the next one waits POOL_RETRY_AFTER.
        assert refilled(isolated) == []
        check = check_standby_pools(isolated.settings)
        assert not check.ok and "not being refilled: b" in check.detail and "refill_pool" in check.remedy
        assert site_count(isolated, "b") == 1  # the half-made one, until a pool job drops it

        servers["b"].worker.kill()
        servers["b"].start_worker(isolated.dispatcher, FAKE_BENCH_FAIL="")
        with_pool(isolated, "b", size=0)
        with isolated.session() as session:
            # As if POOL_RETRY_AFTER had passed.
            session.execute(update(ProvisioningJob).where(ProvisioningJob.id == failed.id)
                            .values(completed_at=failed.completed_at - POOL_RETRY_AFTER))  # fmt: skip
            session.commit()
        refilled(isolated)
        assert site_count(isolated, "b") == 0 and not list((servers["b"].bench / "sites").glob("*.standby.*"))
        with isolated.session() as session:
            ServerRegistry(session, SYSTEM).remove("b")  # with its pool's tenant and jobs
            session.commit()
            assert session.scalar(select(Server.id).where(Server.name == "b")) is None


def test_a_claim_cut_short_and_never_retried_is_dropped_by_the_pool_and_a_late_retry_makes_the_site(isolated, tmp_path):
    with fleet(isolated, tmp_path, ("a",), capacity=5) as servers, isolated.session() as session:
        label, tenant, create = claim_hanging_in_bench(isolated, servers["a"], session, tmp_path)
        servers["a"].worker.kill()
        failed = reaped(isolated, create.id)
        with isolated.session() as backdate:  # as if CLAIM_RETRY_GRACE had passed with no retry
            backdate.execute(update(ProvisioningJob).where(ProvisioningJob.id == failed.id)
                             .values(completed_at=utcnow() - CLAIM_RETRY_GRACE - timedelta(minutes=1)))  # fmt: skip
            backdate.commit()

        servers["a"].start_worker(isolated.dispatcher, FAKE_BENCH_HANG="")
        refilled(isolated)
        assert standbys(isolated)[label] == StandbyStatus.DROPPED and not standby_dir(servers["a"], label).exists()
        done = finished(isolated, retried(isolated, session, create.id).id)
        assert done.status == JobStatus.COMPLETED, done.error
        steps = steps_of(isolated, done.id)
        assert "no longer there" in steps["claim_standby"][1] and steps["create_site"][0] == StepStatus.COMPLETED
        assert servers["a"].holds(tenant.tenant.slug)
