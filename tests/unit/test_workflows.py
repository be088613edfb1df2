"""The plan of each job type: steps, progress, and where the tenant goes."""

import pytest

from provisioning.enums import JobType, TenantStatus
from provisioning.jobs.workflows import SUSPENSION_REFUSALS, WORKFLOWS, workflow_for


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
        (
            JobType.DELETE_SITE,
            {TenantStatus.ACTIVE, TenantStatus.FAILED, TenantStatus.SUSPENDED, TenantStatus.HALF_SUSPENDED},
            {TenantStatus.PENDING, TenantStatus.DELETED},
        ),
        (
            JobType.BACKUP_SITE,
            {TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.HALF_SUSPENDED},
            {TenantStatus.PENDING, TenantStatus.FAILED, TenantStatus.DELETED},
        ),
        (
            JobType.SUSPEND_SITE,
            {TenantStatus.ACTIVE, TenantStatus.HALF_SUSPENDED},
            {TenantStatus.SUSPENDED, TenantStatus.PENDING, TenantStatus.FAILED, TenantStatus.DELETED, TenantStatus.POOL},
        ),
        (
            JobType.UNSUSPEND_SITE,
            {TenantStatus.SUSPENDED, TenantStatus.HALF_SUSPENDED},
            {TenantStatus.ACTIVE, TenantStatus.PENDING, TenantStatus.FAILED, TenantStatus.DELETED, TenantStatus.POOL},
        ),
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


def test_a_suspended_tenant_may_have_only_a_backup_a_delete_or_an_unsuspend_and_is_told_so_for_any_other_job():
    allowed = {job_type for job_type in JobType if workflow_for(job_type).allows(TenantStatus.SUSPENDED)}
    assert allowed == {JobType.BACKUP_SITE, JobType.DELETE_SITE, JobType.UNSUSPEND_SITE}
    for job_type in set(JobType) - allowed:
        refusal = workflow_for(job_type).refusal_for(TenantStatus.SUSPENDED)
        assert refusal.startswith("the tenant is suspended (e.g. for an unpaid invoice); only backup_site, delete_site")
        assert refusal.endswith("until unsuspend_site")
    # Other states keep the job type's own reason.
    assert workflow_for(JobType.UNSUSPEND_SITE).refusal_for(TenantStatus.ACTIVE).startswith("the tenant is not suspended")


def test_a_half_suspended_tenant_is_finished_by_a_suspend_or_an_unsuspend_and_keeps_its_backups_and_delete():
    allowed = {job_type for job_type in JobType if workflow_for(job_type).allows(TenantStatus.HALF_SUSPENDED)}
    assert allowed == {JobType.BACKUP_SITE, JobType.DELETE_SITE, JobType.SUSPEND_SITE, JobType.UNSUSPEND_SITE}
    for job_type in (JobType.CREATE_SITE, JobType.RESTORE_SITE, JobType.RESTORE_DRILL, JobType.MOVE_SITE):
        assert workflow_for(job_type).refusal_for(TenantStatus.HALF_SUSPENDED) == SUSPENSION_REFUSALS[TenantStatus.HALF_SUSPENDED]


@pytest.mark.parametrize(
    ("job_type", "before", "after"),
    [
        (JobType.SUSPEND_SITE, TenantStatus.ACTIVE, TenantStatus.SUSPENDED),
        (JobType.UNSUSPEND_SITE, TenantStatus.SUSPENDED, TenantStatus.ACTIVE),
    ],
)
def test_a_suspension_that_fails_anywhere_says_half_suspended_and_a_cancel_puts_the_tenant_back(job_type, before, after):
    workflow = workflow_for(job_type)
    assert (workflow.tenant_on_start, workflow.tenant_on_success) == (None, after)
    # Every step changes the site (or may have): a failure in any, or a worker lost between them.
    for step in [*workflow.step_names, None]:
        assert workflow.tenant_after_failure(step, before) == TenantStatus.HALF_SUSPENDED
    assert workflow.changed_the_site([workflow.step_names[0]])  # so a cancel undoes from the first step on
    assert workflow.tenant_after_cancel(list(workflow.step_names[:2]), before) == before
    assert not workflow.undoes_failures and workflow.point_of_no_return is None


def test_a_suspend_closes_the_site_before_it_stops_the_scheduler_and_an_unsuspend_opens_it_last():
    """Maintenance mode stops frappe's scheduler too: the site is closed in effect from a suspend's
    first step, and stays closed through an unsuspend until its last change."""
    suspend, unsuspend = workflow_for(JobType.SUSPEND_SITE), workflow_for(JobType.UNSUSPEND_SITE)
    assert suspend.step_names == ("close_site", "disable_scheduler", "verify_suspended")
    assert unsuspend.step_names == ("enable_scheduler", "reopen_site", "verify_open")
