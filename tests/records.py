"""Reading back, each in a fresh session, what the service and its workers wrote: a job, its
steps, its tenant."""

from sqlalchemy import select

from provisioning.enums import TenantStatus
from provisioning.models import JobStep, ProvisioningJob, Tenant


def read_job(sessions, job_id) -> ProvisioningJob:
    with sessions() as session:
        return session.get(ProvisioningJob, job_id)


def read_steps(sessions, job_id) -> list[JobStep]:
    with sessions() as session:
        return list(session.scalars(select(JobStep).where(JobStep.job_id == job_id).order_by(JobStep.position)))


def read_tenant(sessions, tenant_id) -> Tenant:
    with sessions() as session:
        return session.get(Tenant, tenant_id)


def tenant_status(sessions, tenant_id) -> TenantStatus:
    return read_tenant(sessions, tenant_id).status
