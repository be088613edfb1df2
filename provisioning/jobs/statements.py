"""The statements every job request and every job run make, built once.

Building an UPDATE with its WHERE and its cache key costs SQLAlchemy about as much CPU as
PostgreSQL spends running it; these run several times per job, so they are built at import and
executed with parameters. Each is named after what it does; ``ProvisioningService`` decides
when.
"""

from __future__ import annotations

from sqlalchemy import Case, bindparam, case, func, insert, select, update

from provisioning.enums import JobStatus
from provisioning.jobs.workflows import WORKFLOWS
from provisioning.models import JobEvent, JobStep, ProvisioningJob, Tenant

jobs = ProvisioningJob.__table__
tenants = Tenant.__table__
steps = JobStep.__table__

# Statements whose result nobody reads run with ``pg_batching.execute_later``: on PostgreSQL they go
# to the database with the transaction's next statement or its COMMIT, not in a round trip of their own.

# (``inline``: no new row's id is read back.)
INSERT_EVENTS = insert(JobEvent.__table__).inline()
INSERT_STEPS = insert(steps).inline()

# What a new job's INSERT writes: every column but those only a worker or the sweeper fills in.
JOB_COLUMNS = (
    "id", "tenant_id", "job_type", "status", "progress", "message", "requested_by_id", "retry_of_id", "resume_from",
    "options", "request_id", "dispatched_at", "dispatch_count", "created_at",
)  # fmt: skip

# The job's row, only if its tenant exists and is in a state the job type allows: the check and
# the write in one statement. The bound tenant_id is the job's and the tenant's.
INSERT_JOB_IF_ALLOWED = insert(jobs).from_select(
    JOB_COLUMNS,
    select(*(bindparam(column, type_=jobs.c[column].type) for column in JOB_COLUMNS)).where(
        tenants.c.id == bindparam("tenant_id"), tenants.c.status.in_(bindparam("allowed_tenant_states", expanding=True))
    ),
)


def _first_step_message() -> Case:
    """The message of the step a job starts at, as SQL, so that the claim sets it without reading
    the job first: the first step's, or for a retry that resumes, that step's."""
    whens = [
        ((jobs.c.job_type == job_type) & (jobs.c.resume_from == step.name), step.message)
        for job_type, workflow in WORKFLOWS.items()
        for step in workflow.steps
    ]
    whens += [(jobs.c.job_type == job_type, workflow.steps[0].message) for job_type, workflow in WORKFLOWS.items()]
    return case(*whens, else_=jobs.c.message)


# In an UPDATE, no bound parameter is named after a column of its table: SQLAlchemy keeps those
# names for the SET clause.

def _of_its_tenant(column):
    return select(column).where(tenants.c.id == jobs.c.tenant_id).scalar_subquery()


# What the runner of a job reads of it (provisioning.jobs.service.ClaimedJob).
CLAIMED_COLUMNS = ("id", "tenant_id", "job_type", "resume_from", "retry_of_id", "options", "tenant_status_before", "request_id")

# A pending job becomes the worker's; returns what its runner reads of it, its tenant's slug, and the
# site's admin password if one is stored (an earlier attempt's, for a create).
CLAIM_JOB = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), jobs.c.status == JobStatus.PENDING)
    .values(
        status=JobStatus.RUNNING,
        worker=bindparam("claimer"),
        started_at=bindparam("now"),
        heartbeat_at=bindparam("now"),
        message=_first_step_message(),
        tenant_status_before=_of_its_tenant(tenants.c.status),
    )
    .returning(
        *(jobs.c[name] for name in CLAIMED_COLUMNS),
        _of_its_tenant(tenants.c.slug).label("slug"),
        _of_its_tenant(tenants.c.admin_password_encrypted).label("stored_password"),
    )
)

# A running job of this worker's is completed; naming the worker, it is also the ownership check.
COMPLETE_JOB = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), jobs.c.status == JobStatus.RUNNING, jobs.c.worker == bindparam("claimer"))
    .values(status=JobStatus.COMPLETED, progress=100, message="Completed", completed_at=bindparam("now"))
    .returning(jobs.c.tenant_id, jobs.c.job_type)
)

# One step's state, for many steps in one round trip; a start written earlier stays (none is given).
WRITE_STEP = (
    update(steps)
    .where(steps.c.job_id == bindparam("step_job_id"), steps.c.position == bindparam("step_position"))
    .values(
        {name: bindparam(f"step_{name}") for name in ("status", "finished_at", "output", "message")}
        | {"started_at": func.coalesce(bindparam("step_started_at", type_=steps.c.started_at.type), steps.c.started_at)}
    )
)

# A running or cancelling job of this worker's: its progress, never lowered, and what it is doing
# now: the step starting (only while running: a cancelling job starts nothing), else as it was. It
# returns the status, so this one write is also the ownership check and the cancel check, and it
# holds the job's row for the rest of the step write.
OWNED_JOB_PROGRESS = (
    update(jobs)
    .where(
        jobs.c.id == bindparam("job_id"),
        jobs.c.worker == bindparam("claimer"),
        jobs.c.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]),
    )
    .values(
        progress=case((jobs.c.progress < bindparam("at_least"), bindparam("at_least")), else_=jobs.c.progress),
        message=func.coalesce(
            case((jobs.c.status == JobStatus.RUNNING, bindparam("starting_doing", type_=jobs.c.message.type))),
            jobs.c.message,
        ),
    )
    .returning(jobs.c.status)
)

SET_TENANT_STATUS = (
    update(tenants)
    .where(tenants.c.id == bindparam("tenant_id"))
    .values(status=bindparam("new_status"), updated_at=bindparam("now"))
)

# The same, for a job that makes the site: ``made`` becomes the site's admin password unless one is
# stored (an earlier attempt's stays the site's).
SET_TENANT_STATUS_KEEPING_A_PASSWORD = SET_TENANT_STATUS.values(
    admin_password_encrypted=func.coalesce(tenants.c.admin_password_encrypted, bindparam("made")),
    admin_password_revealed_at=case(
        (tenants.c.admin_password_encrypted.is_(None), None), else_=tenants.c.admin_password_revealed_at
    ),
)

# A deleted site's password is forgotten: a later site gets one of its own.
FORGET_ADMIN_PASSWORD = (
    update(tenants)
    .where(tenants.c.id == bindparam("tenant_id"))
    .values(admin_password_encrypted=None, admin_password_revealed_at=None, updated_at=bindparam("now"))
)
