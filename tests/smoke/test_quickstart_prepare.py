"""What `make run` prepares on its embedded defaults, before any process starts."""

from sqlalchemy import select

from provisioning import accounts
from provisioning.db import session_factory, utcnow
from provisioning.enums import JobStatus, JobType, Role, StepStatus, TenantStatus
from provisioning.models import JobStep, ProvisioningJob, Tenant
from provisioning.quickstart import DEMO_OWNER, DEMO_TENANT, prepare
from provisioning.service import ProvisioningService, StepRecord
from provisioning.settings import load_settings
from provisioning.workflows import workflow_for


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
    steps = workflow_for(JobType.CREATE_SITE).steps
    with session_factory(settings.database_url)() as session:
        tenant = accounts.find_tenant(session, DEMO_TENANT)
        service = ProvisioningService(session)
        job = service.request_job(tenant.id, JobType.CREATE_SITE)
        service.start_job(job.id, "worker@gone")
        done = [StepRecord(n, steps[n].name, StepStatus.COMPLETED, finished_at=utcnow(), progress=20 * (n + 1)) for n in (0, 1)]
        service.write_steps(job.id, "worker@gone", done, StepRecord.started(2, steps[2]))

    demo = prepare(settings)

    with session_factory(settings.database_url)() as session:
        interrupted = session.get(ProvisioningJob, job.id)
        assert interrupted.status == JobStatus.FAILED
        reason = "worker worker@gone was lost during step install_apps: the quickstart was stopped while it ran"
        assert interrupted.error == reason
        step = session.scalar(select(JobStep).where(JobStep.job_id == job.id, JobStep.name == "install_apps"))
        assert (step.status, step.message) == (StepStatus.FAILED, interrupted.error)
        assert session.get(Tenant, tenant.id).status == demo.tenant_status == TenantStatus.FAILED
        assert ProvisioningService(session).retry_job(tenant.id, job.id).resume_from == "install_apps"


def test_on_sqlite_too_a_tenant_counts_its_jobs_however_they_were_added(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    prepare(settings)
    with session_factory(settings.database_url)() as session:
        tenant = accounts.find_tenant(session, DEMO_TENANT)
        service = ProvisioningService(session)
        service.cancel_job(tenant.id, service.request_job(tenant.id, JobType.CREATE_SITE).id)
        session.add(ProvisioningJob(tenant_id=tenant.id, job_type=JobType.CREATE_SITE, status=JobStatus.FAILED, progress=0))
        session.commit()

        assert service.list_jobs(tenant.id, page=1, size=20)[1] == 2
        assert service.list_jobs(tenant.id, page=1, size=20, status=JobStatus.FAILED)[1] == 1
