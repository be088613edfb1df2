"""A standby site on the real Frappe bench: made by the pool's job, claimed by a create, renamed to
the tenant's site, and logged into with the tenant's own password. (Part of `make test`, with the
real suite; `python -m benchmarks.standby` measures it with ERPNext.)"""

from __future__ import annotations

import json

import pytest
import requests

from provisioning.accounts.audit import SYSTEM
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from provisioning.servers.registry import ServerRegistry
from tests.integration.real_bench.test_real_bench import JOB_SECONDS, service, serving  # noqa: F401 (a fixture)
from tests.pools import refilled

pytestmark = [pytest.mark.process, pytest.mark.xdist_group("real_bench")]


def keep_pool(isolated, size: int) -> None:
    """The pool of the bench's server at ``size``, and the jobs that bring it there ended."""
    with isolated.session() as session:
        ServerRegistry(session, SYSTEM).update(DEFAULT_SERVER_NAME, standby_pool_size=size)
        session.commit()
    for job in refilled(isolated, timeout=JOB_SECONDS):
        assert job.status.value == "completed", job.error


def test_a_create_claims_a_standby_site_of_the_real_bench_renames_it_and_its_owner_logs_in(service, realbench):  # noqa: F811
    service.start_worker()
    sites = service.bench_path / "sites"
    try:
        keep_pool(service.isolated, 1)
        [standby] = [path for path in sites.iterdir() if path.name.endswith(f".standby.{service.environment['SITE_DOMAIN']}")]
        db_name = json.loads((standby / "site_config.json").read_text())["db_name"]

        created = service.wait(service.ask("create_site"))
        assert created["status"] == "completed", created
        steps = {step["name"]: step for step in service.steps(created["id"])}
        assert steps["claim_standby"]["status"] == "completed", steps["claim_standby"]
        assert steps["create_site"]["status"] == "skipped"
        # Renamed: its folder (and only that held the name) and host_name; its database is the same one.
        assert not standby.exists()
        config = service.site_config()
        assert config["db_name"] == db_name and config["host_name"] == f"https://{service.site}"
        assert config["pause_scheduler"] == 0
        password = service.client.post("/api/v1/tenants/current/admin-password", headers=service.tenant.headers())
        password = password.json["data"]["password"]
        with serving(realbench, service.site) as (url, _pong):
            login = requests.post(f"{url}/api/method/login", headers={"Host": service.site}, timeout=30,
                                  data={"usr": "Administrator", "pwd": password})  # fmt: skip
            assert login.status_code == 200 and login.json()["message"] == "Logged In", login.text
    finally:
        keep_pool(service.isolated, 0)  # the refill drops what the pool holds
    assert not [path for path in sites.iterdir() if ".standby." in path.name and service.environment["SITE_DOMAIN"] in path.name]
