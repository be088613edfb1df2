"""The plan of each job type: steps, progress, and where the tenant goes."""

import pytest

from provisioning.enums import JobType, TenantStatus
from provisioning.jobs.workflows import WORKFLOWS, workflow_for


def test_every_job_type_has_a_plan_of_named_steps_with_messages():
    assert set(WORKFLOWS) == set(JobType)
    for workflow in WORKFLOWS.values():
        assert workflow.steps
        assert len(set(workflow.step_names)) == len(workflow.steps)
        assert all(step.message for step in workflow.steps)


def test_only_the_create_makes_a_site_password_and_it_moves_the_tenant_as_it_starts():
    """The claim stores the password in the UPDATE that sets the tenant's status on start."""
    makers = [workflow for workflow in WORKFLOWS.values() if workflow.needs_admin_password]
    assert [workflow.job_type for workflow in makers] == [JobType.CREATE_SITE]
    assert all(workflow.tenant_on_start is not None for workflow in makers)


@pytest.mark.parametrize("job_type", list(JobType))
def test_progress_rises_with_each_step_and_ends_at_100(job_type):
    workflow = workflow_for(job_type)
    progress = [workflow.progress_after(done) for done in range(len(workflow.steps) + 1)]
    assert progress[0] == 0
    assert progress[-1] == 100
    assert progress == sorted(set(progress))


@pytest.mark.parametrize(
    ("job_type", "allowed", "refused"),
    [
        (JobType.CREATE_SITE, {TenantStatus.PENDING, TenantStatus.FAILED}, {TenantStatus.ACTIVE, TenantStatus.DELETED}),
        (JobType.DELETE_SITE, {TenantStatus.ACTIVE, TenantStatus.FAILED}, {TenantStatus.PENDING, TenantStatus.DELETED}),
        (JobType.BACKUP_SITE, {TenantStatus.ACTIVE}, {TenantStatus.PENDING, TenantStatus.FAILED, TenantStatus.DELETED}),
    ],
)
def test_a_job_type_is_accepted_only_in_tenant_states_where_it_makes_sense(job_type, allowed, refused):
    workflow = workflow_for(job_type)
    assert all(workflow.allows(status) for status in allowed)
    assert not any(workflow.allows(status) for status in refused)


def test_create_and_delete_move_the_tenant_and_backup_leaves_it_alone():
    create, delete, backup = (workflow_for(t) for t in (JobType.CREATE_SITE, JobType.DELETE_SITE, JobType.BACKUP_SITE))
    assert (create.tenant_on_start, create.tenant_on_success, create.tenant_on_failure) == (
        TenantStatus.PROVISIONING,
        TenantStatus.ACTIVE,
        TenantStatus.FAILED,
    )
    assert (delete.tenant_on_start, delete.tenant_on_success) == (TenantStatus.DELETING, TenantStatus.DELETED)
    assert (backup.tenant_on_start, backup.tenant_on_success, backup.tenant_on_failure) == (None, None, None)
