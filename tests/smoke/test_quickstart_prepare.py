"""What `make run` prepares on its embedded defaults, before any process starts, and the banner it prints."""

import stat

import pytest
from sqlalchemy import select

from provisioning.accounts import registry as accounts
from provisioning.enums import JobStatus, JobType, Role, StepStatus, TenantStatus
from provisioning.jobs.records import StepRecord
from provisioning.jobs.workflows import workflow_for
from provisioning.models import ACTIVE_JOB_STATUSES, JobStep, ProvisioningJob, Tenant
from provisioning.operations.quickstart import DEMO_OWNER, DEMO_TENANT, banner_text, keep_credentials_key, prepare
from provisioning.platform.db import session_factory, utcnow
from provisioning.platform.settings import load_settings
from tests.helpers import committing
from tests.records import NO_STANDBY


def test_prepare_makes_the_demo_tenant_and_a_working_token_and_is_safe_to_repeat(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    first, second = prepare(settings), prepare(settings)

    assert first.token != second.token
    assert first.tenant_status == second.tenant_status == TenantStatus.PENDING
    with session_factory(settings.database_url)() as session:
        for token in (first.token, second.token):
            caller = accounts.authenticate(session, token, None)
            assert (caller.user.email, caller.tenant.slug, caller.role) == (DEMO_OWNER, DEMO_TENANT, Role.OWNER)


def test_a_job_an_earlier_quickstart_left_running_is_failed_in_its_step_and_its_retry_resumes_there(tmp_path):
    """As a lost worker's job is reaped: the step in progress failed with the reason, the tenant
    released as for a failure there, and the retry resuming at that step."""
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    prepare(settings)
    create = workflow_for(JobType.CREATE_SITE)
    with session_factory(settings.database_url)() as session:
        tenant = accounts.find_tenant(session, DEMO_TENANT)
        service = committing(session)
        job = service.request_job(tenant.id, JobType.CREATE_SITE)
        service.start_job(job.id, "worker@gone")
        # As the worker writes them: the check done, no standby site to claim, the site made; install_apps started.
        done = [
            StepRecord(0, "check_preconditions", StepStatus.COMPLETED, finished_at=utcnow(), progress=create.progress_after(1)),
            StepRecord(1, "claim_standby", StepStatus.SKIPPED, finished_at=utcnow(), message=NO_STANDBY),
            StepRecord(2, "create_site", StepStatus.COMPLETED, finished_at=utcnow(), progress=create.progress_after(3)),
        ]
        at = create.position_of("install_apps")
        service.write_steps(job.id, "worker@gone", done, StepRecord.started(at, create.steps[at]))

    demo = prepare(settings)

    with session_factory(settings.database_url)() as session:
        interrupted = session.get(ProvisioningJob, job.id)
        assert interrupted.status == JobStatus.FAILED
        reason = "worker worker@gone was lost during step install_apps: the quickstart was stopped while it ran"
        assert interrupted.error == reason
        step = session.scalar(select(JobStep).where(JobStep.job_id == job.id, JobStep.name == "install_apps"))
        assert (step.status, step.message) == (StepStatus.FAILED, interrupted.error)
        assert session.get(Tenant, tenant.id).status == demo.tenant_status == TenantStatus.FAILED
        assert committing(session).retry_job(tenant.id, job.id).resume_from == "install_apps"


def test_on_sqlite_too_a_tenant_counts_its_jobs_however_they_were_added(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    prepare(settings)
    with session_factory(settings.database_url)() as session:
        tenant = accounts.find_tenant(session, DEMO_TENANT)
        service = committing(session)
        service.cancel_job(tenant.id, service.request_job(tenant.id, JobType.CREATE_SITE).id)
        session.add(ProvisioningJob(tenant_id=tenant.id, job_type=JobType.CREATE_SITE, status=JobStatus.FAILED, progress=0))
        session.commit()

        assert service.list_jobs(tenant.id, page=1, size=20)[1] == 2
        assert service.list_jobs(tenant.id, page=1, size=20, status=JobStatus.FAILED)[1] == 1


def _set_status(settings, slug: str, status: TenantStatus) -> None:
    with session_factory(settings.database_url)() as session:
        accounts.find_tenant(session, slug).status = status
        session.commit()


def _busy_with(settings, started: bool) -> None:
    with session_factory(settings.database_url)() as session:
        service = committing(session)
        job = service.request_job(accounts.find_tenant(session, DEMO_TENANT).id, JobType.CREATE_SITE)
        if started:
            service.start_job(job.id, "worker@elsewhere pid 1")


# Each state the demo tenant can be in when `make run` starts, and what makes it so.
DEMO_STATES = {
    "pending": lambda settings: None,
    "failed": lambda settings: _set_status(settings, DEMO_TENANT, TenantStatus.FAILED),
    "active": lambda settings: _set_status(settings, DEMO_TENANT, TenantStatus.ACTIVE),
    "deleted": lambda settings: _set_status(settings, DEMO_TENANT, TenantStatus.DELETED),
    "busy with a pending job": lambda settings: _busy_with(settings, started=False),
    # A running job survives only on PostgreSQL and RabbitMQ, where its worker may still be alive.
    "busy with a running job": lambda settings: _busy_with(settings, started=True),
}


@pytest.mark.parametrize("state", DEMO_STATES)
def test_whatever_state_the_demo_tenant_is_in_the_banner_offers_what_the_service_accepts(tmp_path, state):
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    prepare(settings)
    DEMO_STATES[state](settings)
    if state == "busy with a running job":
        settings = settings.model_copy(update={"embedded": False})  # the embedded quickstart fails it as interrupted

    demo = prepare(settings)
    banner = banner_text(settings, demo, "admin", "secret")

    with session_factory(settings.database_url)() as session:
        caller = accounts.authenticate(session, demo.token, None)
        assert (caller.user.email, caller.tenant.slug, caller.role) == (demo.owner, demo.tenant, Role.OWNER)
        service = committing(session)
        if demo.offer is not None:
            assert f'-d \'{{"job_type": "{demo.offer.value}"}}\'' in banner
            service.request_job(caller.tenant.id, demo.offer)  # accepted: it raises Conflict otherwise
        else:
            assert state.startswith("busy"), f"the banner offers nothing for a {state} tenant"
            job = service.get_job(caller.tenant.id, demo.active_job.id)
            assert job.status in ACTIVE_JOB_STATUSES and f"/jobs/{job.id} " in banner
    assert demo.tenant == ("demo-2" if state == "deleted" else DEMO_TENANT)


def test_after_each_deleted_demo_tenant_the_next_one_gets_its_own_owner(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    first = prepare(settings)
    _set_status(settings, first.tenant, TenantStatus.DELETED)
    second = prepare(settings)
    _set_status(settings, second.tenant, TenantStatus.DELETED)
    third = prepare(settings)

    assert [(demo.tenant, demo.owner) for demo in (first, second, third)] == [
        ("demo", DEMO_OWNER), ("demo-2", "owner@demo-2.example"), ("demo-3", "owner@demo-3.example"),
    ]  # fmt: skip
    assert (third.offer, prepare(settings).tenant) == (JobType.CREATE_SITE, "demo-3")


def test_the_data_directory_the_database_and_the_kept_key_are_readable_by_their_user_alone(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    prepare(settings)
    keep_credentials_key(settings)

    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    for name in ("provisioning.sqlite3", "site-credentials.key"):
        assert stat.S_IMODE((settings.data_dir / name).stat().st_mode) == 0o600, name
    assert load_settings({"DATA_DIR": str(tmp_path / "data")}).site_credentials_key_file == settings.kept_credentials_key_path
