"""Reading back, each in a fresh session, what the service and its workers wrote: a job, its
steps, its tenant."""

from sqlalchemy import select

from provisioning.enums import JobType, StepStatus, TenantStatus
from provisioning.jobs.workflows import workflow_for
from provisioning.models import JobStep, ProvisioningJob, Tenant

# What a create_site with no standby site reserved for it (none was ready) records of its
# claim_standby step: skipped, saying why; the steps that make the site run instead.
NO_STANDBY = "Skipped: no standby site to claim (none was ready, or its claim failed): the site is made"


def read_job(sessions, job_id) -> ProvisioningJob:
    with sessions() as session:
        return session.get(ProvisioningJob, job_id)


def read_steps(sessions, job_id) -> list[JobStep]:
    with sessions() as session:
        return list(session.scalars(select(JobStep).where(JobStep.job_id == job_id).order_by(JobStep.position)))


def made_without_a_standby_site(steps: list[JobStep]) -> list[JobStep]:
    """The steps a create_site ran, once its claim_standby step is seen skipped, saying why (``NO_STANDBY``)."""
    [claim] = [step for step in steps if step.name == "claim_standby"]
    assert (claim.status, claim.message) == (StepStatus.SKIPPED, NO_STANDBY), (claim.status, claim.message)
    return [step for step in steps if step is not claim]


def create_stopped_at(step: str, status: StepStatus) -> dict[str, StepStatus]:
    """The steps of a create_site made without a standby site that stopped at ``step`` (``status``):
    those before it completed (its claim_standby skipped), those after it pending."""
    names = workflow_for(JobType.CREATE_SITE).step_names
    at = names.index(step)
    before = {name: StepStatus.SKIPPED if name == "claim_standby" else StepStatus.COMPLETED for name in names[:at]}
    return before | {step: status} | dict.fromkeys(names[at + 1 :], StepStatus.PENDING)


def read_tenant(sessions, tenant_id) -> Tenant:
    with sessions() as session:
        return session.get(Tenant, tenant_id)


def tenant_status(sessions, tenant_id) -> TenantStatus:
    return read_tenant(sessions, tenant_id).status
