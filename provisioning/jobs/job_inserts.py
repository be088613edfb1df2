"""The statements that record a new job: its row, only if its tenant may take it, with its
``created`` event and the request's audit entry. Built once; ``JobRequests`` runs them."""

from __future__ import annotations

from sqlalchemy import Boolean, bindparam, insert, select

from provisioning.jobs.moves import status_in
from provisioning.jobs.records import jobs, tenants
from provisioning.models import ACTIVE_JOB_STATUSES, AuditEntry, JobEvent

job_events = JobEvent.__table__
audit_log = AuditEntry.__table__

# What a new job's INSERT writes: every column but those only a worker or the sweeper fills in.
JOB_COLUMNS = (
    "id", "tenant_id", "job_type", "status", "progress", "message", "requested_by_id", "retry_of_id", "resume_from",
    "options", "request_id", "dispatch_count", "created_at",
)  # fmt: skip

# The job's row, only if its tenant exists, is in a state the job type allows and has no active
# job: the checks and the write in one statement. (Two requests at once can both pass the last
# check; the partial unique index then refuses the second.)
INSERT_JOB_IF_ALLOWED = insert(jobs).from_select(
    JOB_COLUMNS,
    select(*(bindparam(column, type_=jobs.c[column].type) for column in JOB_COLUMNS)).where(
        tenants.c.id == bindparam("tenant_id"),
        tenants.c.status.in_(bindparam("allowed_tenant_states", expanding=True)),
        ~select(jobs.c.id)
        .where(jobs.c.tenant_id == bindparam("tenant_id"), status_in(ACTIVE_JOB_STATUSES))
        .exists(),
    ),
).returning(jobs.c.id)


def _bound_row(table, prefix: str, columns: tuple[str, ...]) -> list:
    """A row of ``table``'s ``columns``, bound as ``{prefix}_{column}`` (no bound parameter is
    named after a column of the job's INSERT)."""
    return [bindparam(f"{prefix}_{column}", type_=table.c[column].type) for column in columns]


EVENT_COLUMNS = ("kind", "actor", "detail", "created_at", "status")
AUDIT_COLUMNS = ("created_at", "actor", "action", "tenant_id", "target", "ip", "user_agent", "detail")
_made = INSERT_JOB_IF_ALLOWED.cte("made")
# On PostgreSQL, the job's checked INSERT, its ``created`` event and the request's audit entry (if
# ``audited``) in one statement: both read the new job's id, so neither is written without it.
MAKE_JOB = select(_made.c.id).add_cte(
    insert(job_events)
    .from_select(("job_id", *EVENT_COLUMNS), select(_made.c.id, *_bound_row(job_events, "event", EVENT_COLUMNS)))
    .cte("created_event"),
    insert(audit_log)
    .from_select(
        AUDIT_COLUMNS,
        select(*_bound_row(audit_log, "audit", AUDIT_COLUMNS)).select_from(_made).where(bindparam("audited", type_=Boolean)),
    )
    .cte("audited"),
)
