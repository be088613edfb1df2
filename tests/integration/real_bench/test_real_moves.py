"""A site moved between two real Frappe benches, as between two bench servers: each server a
worker of its own (SERVER_NAME) on its own bench, MariaDB and Redis, the backup carried through
offsite storage (moto's S3 server on loopback). (Part of `make test`, with the real suite.)"""

from __future__ import annotations

import json
import uuid
from contextlib import ExitStack

import pytest
import requests

from api import create_app
from provisioning.accounts.audit import SYSTEM
from provisioning.enums import JobStatus, JobType, ServerStatus
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from provisioning.servers.placement import Placement
from provisioning.servers.registry import ServerRegistry
from tests.factories import TenantFactory
from tests.helpers import StrictClient, committing, wait_for
from tests.integration.real_bench.conftest import environment_of_bench, folders_of_bench_user
from tests.integration.real_bench.test_real_bench import JOB_SECONDS, databases_and_users, serving
from tests.records import read_job
from tests.stack import WorkerProcess

pytestmark = [pytest.mark.process, pytest.mark.xdist_group("real_bench")]


def finished(isolated, job_id):
    return wait_for(
        lambda: (job := read_job(isolated.sessions, job_id)).status in (JobStatus.COMPLETED, JobStatus.FAILED) and job,
        timeout=JOB_SECONDS, interval=0.5, what=f"job {job_id} to finish",
    )  # fmt: skip


def site_config(bench, site: str) -> dict:
    return json.loads((bench.path / "sites" / site / "site_config.json").read_text())


def test_a_site_moves_to_another_real_bench_with_its_data_and_key_and_leaves_the_first(
    isolated, realbench, second_realbench, s3
):
    domain = f"t{uuid.uuid4().hex[:8]}.real.test"
    benches = {"a": realbench, "b": second_realbench}
    with isolated.session() as session:
        registry = ServerRegistry(session, SYSTEM)
        registry.set_status(DEFAULT_SERVER_NAME, ServerStatus.DRAINING)
        for name in benches:
            registry.add(name, capacity=5)
        session.commit()
    with ExitStack() as stack:
        for name, bench in benches.items():
            environment = environment_of_bench(isolated, bench, stack.enter_context(folders_of_bench_user(bench)), domain)
            worker = WorkerProcess({**environment, **s3.environment(), "SERVER_NAME": name}, isolated.dispatcher, concurrency=1)
            stack.callback(worker.stop)
        moved_with_its_data(isolated, realbench, second_realbench, domain)


def moved_with_its_data(isolated, first, second, domain: str) -> None:
    app = create_app(isolated.settings)
    app.test_client_class = StrictClient
    client = app.test_client()
    with isolated.session() as session:
        tenant = TenantFactory(session).create()
        service = committing(session, dispatch=isolated.dispatcher.send_job)
        site = f"{tenant.tenant.slug}.{domain}"
        created = finished(isolated, service.request_job(tenant.id, JobType.CREATE_SITE, options={"server": "a"}).id)
        assert created.status == JobStatus.COMPLETED, created.error
        password = client.post("/api/v1/tenants/current/admin-password", headers=tenant.headers()).json["data"]["password"]
        # frappe makes a site's encryption key the first time it encrypts something: now.
        assert first.bench("--site", site, "execute", "frappe.utils.password.get_encryption_key").returncode == 0
        old = site_config(first, site)
        first.sql(f"CREATE TABLE `{old['db_name']}`.made_before_the_move (x int)")
        first.sql(f"INSERT INTO `{old['db_name']}`.made_before_the_move VALUES (7)")

        move = finished(isolated, service.request_job(tenant.id, JobType.MOVE_SITE, options={"server": "b"}).id)
        assert move.status == JobStatus.COMPLETED, move.error
        assert Placement(session).seat_of(tenant.id).name == "b"

        # Gone from the first bench, its database and database user dropped; on the second with its data.
        assert not (first.path / "sites" / site).exists()
        databases, users = databases_and_users(first)
        assert old["db_name"] not in databases and old["db_name"] not in users
        new = site_config(second, site)
        assert second.sql(f"SELECT x FROM `{new['db_name']}`.made_before_the_move") == ["7"]
        # The old key, without which frappe could not read what it keeps encrypted; open, not in maintenance.
        assert new["encryption_key"] == old["encryption_key"] and not new.get("maintenance_mode")

        with serving(second, site) as (url, pong):
            assert pong == {"message": "pong"}
            login = requests.post(f"{url}/api/method/login", headers={"Host": site}, timeout=30,
                                  data={"usr": "Administrator", "pwd": password})  # fmt: skip
            assert login.status_code == 200 and login.json()["message"] == "Logged In", login.text

        deleted = finished(isolated, service.request_job(tenant.id, JobType.DELETE_SITE, options={"skip_final_backup": True}).id)
        assert deleted.status == JobStatus.COMPLETED, deleted.error
        assert not (second.path / "sites" / site).exists()
