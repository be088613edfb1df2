"""suspend_site and unsuspend_site through the real API and a real worker on the bench driver (the
fake bench), on PostgreSQL and RabbitMQ: billing closes a site and opens it again; a suspended
tenant keeps its backups and may be deleted, and nothing else; a suspension that fails or is
cancelled half-way leaves a state that says so, and the retry, or the other job, finishes it."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select

from api import create_app
from provisioning.enums import JobStatus, JobType, Role, StepStatus, TenantStatus
from provisioning.jobs.runner import JobRunner
from provisioning.models import JobEvent, ProvisioningJob, Server
from provisioning.operations.schedules import SCHEDULER
from provisioning.sites.drivers.simulated import SimulatedDriver
from tests.factories import TenantFactory, operator_headers
from tests.fleet import BenchServer, fleet
from tests.helpers import StrictClient, assert_error, committing, wait_for
from tests.integration.test_metrics import scrape, value
from tests.integration.test_moves import finished, in_step
from tests.records import read_job, read_steps, read_tenant
from tests.stack import SweeperProcess

JOBS = "/api/v1/provisioning/jobs"
SUSPENDED_REFUSAL = (
    "the tenant is suspended (e.g. for an unpaid invoice); only backup_site, delete_site and unsuspend_site are allowed "
    "until unsuspend_site"
)


@pytest.fixture
def api(isolated) -> StrictClient:
    app = create_app(isolated.settings)
    app.test_client_class = StrictClient
    return app.test_client()


class Tenant:
    """A tenant as the API sees it: its owner's and a platform operator's headers, and its site on ``server``."""

    def __init__(self, isolated, api, server: BenchServer):
        self.isolated, self.api, self.server = isolated, api, server
        with isolated.session() as session:
            self.made = TenantFactory(session).create()
            self.operator = operator_headers(session) | {"X-Tenant-ID": self.made.tenant.slug}
        self.owner = self.made.headers(Role.OWNER)
        self.slug = self.made.tenant.slug

    def ask(self, job_type: str, headers: dict, **body):
        return self.api.post(JOBS, json={"job_type": job_type, **body}, headers=headers)

    def run(self, job_type: str, headers: dict | None = None, **body):
        """Ask for the job (as the owner unless ``headers`` say otherwise) and wait for its end."""
        response = self.ask(job_type, headers or self.owner, **body)
        assert response.status_code == 201, response.json
        return finished(self.isolated, uuid.UUID(response.json["data"]["id"]))

    def refused(self, job_type: str, headers: dict | None = None, status: int = 409, **body) -> str:
        return assert_error(self.ask(job_type, headers or self.owner, **body), status)["message"]

    @property
    def status(self) -> TenantStatus:
        return read_tenant(self.isolated.sessions, self.made.id).status

    def config(self) -> dict:
        return self.server.site_config(self.slug)

    def scheduler_enabled(self) -> bool:
        """System Settings' flag, in the fake MariaDB's folder for the site, where bench keeps it."""
        return (self.server.bench / "fake-mariadb" / self.config()["db_name"] / "scheduler_enabled").exists()

    def is_open(self) -> bool:
        return not self.config().get("maintenance_mode") and self.scheduler_enabled()

    def is_closed(self) -> bool:
        return self.config().get("maintenance_mode") == 1 and not self.scheduler_enabled()


def site_count(isolated, name: str) -> int:
    with isolated.session() as session:
        return session.scalar(select(Server.site_count).where(Server.name == name))


def step_statuses(isolated, job_id) -> dict[str, StepStatus]:
    return {step.name: step.status for step in read_steps(isolated.sessions, job_id)}


def test_billing_suspends_a_site_which_then_keeps_only_its_backups_and_unsuspend_opens_it_again(isolated, api, tmp_path):
    with fleet(isolated, tmp_path, ("s1",)) as servers:
        tenant = Tenant(isolated, api, servers["s1"])
        assert tenant.run("create_site").status == JobStatus.COMPLETED
        assert tenant.is_open() and site_count(isolated, "s1") == 1

        assert "only platform operators" in tenant.refused("suspend_site", status=403)
        suspend = tenant.run("suspend_site", tenant.operator)

        assert suspend.status == JobStatus.COMPLETED, suspend.error
        assert tenant.status == TenantStatus.SUSPENDED
        assert tenant.is_closed()
        assert site_count(isolated, "s1") == 1  # a suspended site is a site: it keeps its room
        # The owner can lift it neither by asking for an unsuspend nor by retrying (or cancelling) a suspension.
        assert "only platform operators" in tenant.refused("unsuspend_site", status=403)
        retry = api.post(f"{JOBS}/{suspend.id}/retry", headers=tenant.owner)
        assert "only platform operators" in assert_error(retry, 403)["message"]

        for job_type in ("create_site", "restore_drill"):
            assert tenant.refused(job_type) == f"cannot start {job_type}: {SUSPENDED_REFUSAL} (it is suspended)"
        assert SUSPENDED_REFUSAL in tenant.refused("move_site", tenant.operator)
        assert SUSPENDED_REFUSAL in tenant.refused("suspend_site", tenant.operator)

        backup = tenant.run("backup_site")
        assert backup.status == JobStatus.COMPLETED, backup.error
        assert tenant.status == TenantStatus.SUSPENDED and tenant.is_closed()
        backup_id = api.get("/api/v1/provisioning/backups", headers=tenant.owner).json["data"][0]["id"]
        assert SUSPENDED_REFUSAL in tenant.refused("restore_site", backup_id=backup_id)

        unsuspend = tenant.run("unsuspend_site", tenant.operator)

        assert unsuspend.status == JobStatus.COMPLETED, unsuspend.error
        assert tenant.status == TenantStatus.ACTIVE
        assert tenant.is_open() and tenant.config()["maintenance_mode"] == 0
        assert tenant.run("restore_drill").status == JobStatus.COMPLETED  # what was refused runs again
        not_suspended = "cannot start unsuspend_site: the tenant is not suspended"
        assert tenant.refused("unsuspend_site", tenant.operator).startswith(not_suspended)


def test_a_suspended_site_is_deleted_after_its_final_backup(isolated, api, tmp_path):
    with fleet(isolated, tmp_path, ("s1",)) as servers:
        tenant = Tenant(isolated, api, servers["s1"])
        assert tenant.run("create_site").status == JobStatus.COMPLETED
        assert tenant.run("suspend_site", tenant.operator).status == JobStatus.COMPLETED

        delete = tenant.run("delete_site")

        assert delete.status == JobStatus.COMPLETED, delete.error
        assert tenant.status == TenantStatus.DELETED
        assert not servers["s1"].holds(tenant.slug) and site_count(isolated, "s1") == 0
        assert step_statuses(isolated, delete.id)["final_backup"] == StepStatus.COMPLETED


def test_a_suspend_that_fails_half_way_leaves_the_site_closed_says_half_suspended_and_its_retry_finishes_it(
    isolated, api, tmp_path
):
    with fleet(isolated, tmp_path, ("s1",), extra={"FAKE_BENCH_FAIL": "disable-scheduler"}) as servers:
        server = servers["s1"]
        tenant = Tenant(isolated, api, server)
        assert tenant.run("create_site").status == JobStatus.COMPLETED

        failed = tenant.run("suspend_site", tenant.operator)

        assert failed.status == JobStatus.FAILED
        assert failed.error.startswith("step disable_scheduler failed: ")
        assert step_statuses(isolated, failed.id) == {
            "close_site": StepStatus.COMPLETED, "disable_scheduler": StepStatus.FAILED, "verify_suspended": StepStatus.PENDING,
        }  # fmt: skip
        # The first step went through: the users see the maintenance page (and frappe's scheduler runs
        # nothing while it shows), but System Settings still enable the scheduler; the status says so.
        assert tenant.config()["maintenance_mode"] == 1 and tenant.scheduler_enabled()
        assert tenant.status == TenantStatus.HALF_SUSPENDED
        assert "the tenant is half suspended" in tenant.refused("create_site")
        assert tenant.run("backup_site").status == JobStatus.COMPLETED
        assert tenant.status == TenantStatus.HALF_SUSPENDED

        server.worker.stop()
        server.start_worker(isolated.dispatcher, FAKE_BENCH_FAIL="")
        response = api.post(f"{JOBS}/{failed.id}/retry", headers=tenant.operator)
        assert response.status_code == 201, response.json
        assert response.json["data"]["resume_from"] is None  # a backup ran since: it starts over, harmlessly
        retry = finished(isolated, uuid.UUID(response.json["data"]["id"]))

        assert retry.status == JobStatus.COMPLETED, retry.error
        assert tenant.status == TenantStatus.SUSPENDED and tenant.is_closed()


def test_an_unsuspend_that_fails_half_way_says_half_suspended_and_a_suspend_can_finish_it_the_other_way(
    isolated, api, tmp_path
):
    with fleet(isolated, tmp_path, ("s1",)) as servers:
        server = servers["s1"]
        tenant = Tenant(isolated, api, server)
        assert tenant.run("create_site").status == JobStatus.COMPLETED
        assert tenant.run("suspend_site", tenant.operator).status == JobStatus.COMPLETED
        server.worker.stop()
        server.start_worker(isolated.dispatcher, FAKE_BENCH_FAIL="set-maintenance-mode")

        failed = tenant.run("unsuspend_site", tenant.operator)

        assert failed.status == JobStatus.FAILED
        assert failed.error.startswith("step reopen_site failed: ")
        # The scheduler is enabled, the site still in maintenance mode: closed in effect, and half suspended.
        assert tenant.config()["maintenance_mode"] == 1 and tenant.scheduler_enabled()
        assert tenant.status == TenantStatus.HALF_SUSPENDED

        server.worker.stop()
        server.start_worker(isolated.dispatcher, FAKE_BENCH_FAIL="")
        suspend = tenant.run("suspend_site", tenant.operator)  # billing decides the other way

        assert suspend.status == JobStatus.COMPLETED, suspend.error
        assert tenant.status == TenantStatus.SUSPENDED and tenant.is_closed()


def test_a_suspend_cancelled_as_it_runs_is_undone_and_the_site_is_open_again(isolated, api, tmp_path):
    with fleet(isolated, tmp_path, ("s1",), extra={"FAKE_BENCH_HANG": "disable-scheduler"}) as servers:
        tenant = Tenant(isolated, api, servers["s1"])
        assert tenant.run("create_site").status == JobStatus.COMPLETED
        response = tenant.ask("suspend_site", tenant.operator)
        job_id = uuid.UUID(response.json["data"]["id"])
        in_step(isolated, job_id, "disable_scheduler")

        owners_cancel = api.post(f"{JOBS}/{job_id}/cancel", headers=tenant.owner)
        assert "only platform operators" in assert_error(owners_cancel, 403)["message"]
        assert api.post(f"{JOBS}/{job_id}/cancel", headers=tenant.operator).status_code == 202
        cancelled = finished(isolated, job_id)

        assert cancelled.status == JobStatus.CANCELLED, cancelled.error
        assert cancelled.message == "Cancelled; its partial work was undone"
        assert tenant.status == TenantStatus.ACTIVE
        assert tenant.is_open() and tenant.config()["maintenance_mode"] == 0


def test_the_sweepers_scheduled_backups_keep_backing_up_a_suspended_site_and_leave_it_suspended(isolated, api, tmp_path):
    with fleet(isolated, tmp_path, ("s1",)) as servers:
        tenant = Tenant(isolated, api, servers["s1"])
        assert tenant.run("create_site").status == JobStatus.COMPLETED
        assert tenant.run("suspend_site", tenant.operator).status == JobStatus.COMPLETED
        with isolated.session() as session:
            pending = TenantFactory(session).create()
        # Due about a second after its site was made, and every second after.
        often = {"SWEEP_INTERVAL_SECONDS": "0.5", "BACKUP_INTERVAL_HOURS": "0.0003"}
        sweeper = SweeperProcess({**isolated.environment, **often}, tmp_path)
        try:
            backup = wait_for(lambda: scheduled_backup(isolated, tenant.made.id), timeout=60, what="a scheduled backup")
        finally:
            log = sweeper.stop()
        done = finished(isolated, backup.id)

        assert done.status == JobStatus.COMPLETED, (done.error, log)
        assert tenant.status == TenantStatus.SUSPENDED and tenant.is_closed()
        assert scheduled_backup(isolated, pending.id) is None  # no site, no backup


def scheduled_backup(isolated, tenant_id) -> ProvisioningJob | None:
    """The tenant's first backup_site asked for by the backup schedule."""
    with isolated.session() as session:
        return session.scalar(
            select(ProvisioningJob)
            .join(JobEvent, JobEvent.job_id == ProvisioningJob.id)
            .where(ProvisioningJob.tenant_id == tenant_id, ProvisioningJob.job_type == JobType.BACKUP_SITE)
            .where(JobEvent.kind == "created", JobEvent.actor == SCHEDULER)
            .order_by(ProvisioningJob.created_at)
            .limit(1)
        )


def test_the_metrics_count_tenants_by_status_suspended_ones_among_them(isolated, api):
    with isolated.session() as session:
        before = scrape(api)
        TenantFactory(session).create(status=TenantStatus.SUSPENDED)

    after = scrape(api)

    assert value(after, "erpmax_tenants", status="suspended") == value(before, "erpmax_tenants", status="suspended") + 1
    assert ("erpmax_tenants", frozenset({("status", "half_suspended")})) in after


def test_the_simulated_driver_suspends_and_unsuspends_a_tenant(isolated):
    with isolated.session() as session:
        tenant = TenantFactory(session).create(status=TenantStatus.ACTIVE)
        service = committing(session)
        runner = JobRunner.for_settings(isolated.settings, isolated.sessions, SimulatedDriver(0), "test-runner@localhost")
        for job_type, status in ((JobType.SUSPEND_SITE, TenantStatus.SUSPENDED), (JobType.UNSUSPEND_SITE, TenantStatus.ACTIVE)):
            job = service.request_job(tenant.id, job_type)
            runner.run(job.id)
            assert read_job(isolated.sessions, job.id).status == JobStatus.COMPLETED
            assert read_tenant(isolated.sessions, tenant.id).status == status


def test_an_unsuspend_whose_scheduler_stays_paused_fails_its_check_and_says_half_suspended(isolated, api, tmp_path):
    """frappe's scheduler runs nothing for a site whose config pauses it, as bench's scheduler status
    says: the check after an unsuspend finds it so, rather than calling the site open."""
    with fleet(isolated, tmp_path, ("s1",)) as servers:
        tenant = Tenant(isolated, api, servers["s1"])
        assert tenant.run("create_site").status == JobStatus.COMPLETED
        assert tenant.run("suspend_site", tenant.operator).status == JobStatus.COMPLETED
        config_path = servers["s1"].site_dir(tenant.slug) / "site_config.json"
        config_path.write_text(json.dumps(tenant.config() | {"pause_scheduler": 1}))

        failed = tenant.run("unsuspend_site", tenant.operator)

        assert failed.status == JobStatus.FAILED
        assert failed.error.startswith("step verify_open failed: the scheduler of")
        assert "is disabled after enable-scheduler" in failed.error
        assert tenant.status == TenantStatus.HALF_SUSPENDED
