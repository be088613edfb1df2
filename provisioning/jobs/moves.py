"""The statements that move a job: the compare-and-set of its status, its sources read from the
table of allowed moves (``states``), the move of its tenant, and the statements built once that
make the move together with the writes of its steps and events (``Boundary``, ``LAY_OUT``)."""

from __future__ import annotations

from typing import Collection, Sequence

from sqlalchemy import (
    CTE,
    Boolean,
    ColumnElement,
    Integer,
    Select,
    Text,
    Update,
    Uuid,
    bindparam,
    case,
    cast,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    update,
)

from provisioning.enums import JobStatus
from provisioning.jobs.states import sources_of
from provisioning.models import JobEvent, JobStep, ProvisioningJob, Tenant
from provisioning.platform.db import UTCDateTime, json_rows

jobs = ProvisioningJob.__table__
steps = JobStep.__table__
tenants = Tenant.__table__


def compare_and_set(
    job_id,
    target: JobStatus,
    sources: Collection[JobStatus] | None = None,
    conditions: Sequence = (),
    returning: Sequence = (),
    values: dict | None = None,
) -> Update:
    """The compare-and-set UPDATE of a job's status (``job_id`` a value or a bound parameter),
    returning the job's id and status and the ``returning`` columns.

    Raises:
        ValueError: ``sources`` names a state that may not move to ``target``.
    """
    allowed = sources_of(target)
    sources = allowed if sources is None else frozenset(sources)
    if not sources or not sources <= allowed:
        raise ValueError(f"the state machine has no move from {sorted(sources)} to {target}")
    return (
        update(jobs)
        .where(jobs.c.id == job_id, status_in(sources), *conditions)
        .values(status=target, **(values or {}))
        .returning(jobs.c.id, jobs.c.status, *returning)
    )


def status_in(statuses: Collection[JobStatus]) -> ColumnElement:
    """``status IN (...)`` of a fixed set of states, each a bound parameter of its own: an IN of a
    list would be one "expanding" parameter, which SQLAlchemy rewrites into the SQL at every run."""
    return jobs.c.status.in_([literal(status, jobs.c.status.type) for status in sorted(statuses)])


def tenant_move(tenant_id) -> Update:
    """The UPDATE that moves a job's tenant (``tenant_id`` a column or a bound parameter) to
    ``:tenant_status``, and does nothing when that is NULL. With ``:new_password`` the site's admin
    password becomes it, not yet revealed; with ``:forget_password`` it is forgotten; with
    ``:leave_server`` the tenant leaves its server, with ``:leave_target`` the room a move kept for
    it on another. The parameters come from
    ``records.tenant_move_parameters``, which holds the rules."""
    status = bindparam("tenant_status", type_=tenants.c.status.type)
    new_password = bindparam("new_password", type_=Text)
    forget = bindparam("forget_password", type_=Boolean)
    leave_server = bindparam("leave_server", type_=Boolean)
    leave_target = bindparam("leave_target", type_=Boolean)
    # A NULL bound alone has no type PostgreSQL can tell; its IS NOT NULL gets one.
    return (
        update(tenants)
        .where(tenants.c.id == tenant_id, cast(status, Text).is_not(None))
        .values(
            status=status,
            updated_at=bindparam("tenant_moved_at", type_=UTCDateTime),
            admin_password_encrypted=case(
                (forget, null()), else_=func.coalesce(new_password, tenants.c.admin_password_encrypted)
            ),
            admin_password_revealed_at=case(
                (or_(forget, cast(new_password, Text).is_not(None)), null()), else_=tenants.c.admin_password_revealed_at
            ),
            server_id=case((leave_server, null()), else_=tenants.c.server_id),
            target_server_id=case((leave_target, null()), else_=tenants.c.target_server_id),
        )
    )


def _recorded_events(moved: CTE, condition: ColumnElement | None = None) -> CTE:
    """The INSERT of the job's events, bound as JSON rows (``:recorded``), for the job ``moved``
    returned; only the rows that are written ``always`` or meet ``condition``, if given."""
    rows = json_rows("recorded", kind=Text, actor=Text, detail=Text, created_at=UTCDateTime, status=Text, always=Boolean)
    chosen = select(moved.c.id, rows.c.kind, rows.c.actor, rows.c.detail, rows.c.created_at, rows.c.status).select_from(
        rows.join(moved, true())
    )
    if condition is not None:
        chosen = chosen.where(or_(rows.c.always, condition))
    return insert(JobEvent.__table__).from_select(("job_id", "kind", "actor", "detail", "created_at", "status"), chosen).cte(
        "recorded_events"
    )


class Boundary:
    """An UPDATE of one job's row (returning its ``id`` and ``status``, and ``tenant_id`` when it
    ``moves_tenant``, with bound parameters) and, built once with it, the statement that runs it
    on PostgreSQL with the writes of its steps and events (and its tenant's move): data-modifying
    CTEs that read the job's new row, the rows bound as JSON (``json_rows``)."""

    def __init__(self, job_update: Update, moves_tenant: bool = False):
        self.job_update = job_update
        self.moves_tenant = moves_tenant
        moved = job_update.cte("moved")
        running = moved.c.status == JobStatus.RUNNING
        step_rows = json_rows(
            "written", position=Integer, status=Text, started_at=UTCDateTime, finished_at=UTCDateTime, output=Text, message=Text,
            always=Boolean,
        )  # fmt: skip
        written = (
            update(steps)
            .where(steps.c.job_id == moved.c.id, steps.c.position == step_rows.c.position, or_(step_rows.c.always, running))
            .values(
                status=step_rows.c.status,
                started_at=func.coalesce(step_rows.c.started_at, steps.c.started_at),
                finished_at=step_rows.c.finished_at,
                output=step_rows.c.output,
                message=step_rows.c.message,
            )
            .cte("written_steps")
        )
        writes = [written, _recorded_events(moved, running)]
        if moves_tenant:
            writes.append(tenant_move(moved.c.tenant_id).cte("moved_tenant"))
        self.together = select(moved).add_cte(*writes)


def _lay_out() -> Select:
    """A claimed job's writes after its claim, in one statement on PostgreSQL: what the job is
    doing now (``:doing``), its steps (``:laid_out``), its events (``:recorded``) and its
    tenant's move, the job's id bound as ``:laid_out_job``."""
    doing = (
        update(jobs)
        .where(jobs.c.id == bindparam("laid_out_job"))
        .values(message=bindparam("doing", type_=Text))
        .returning(jobs.c.id, jobs.c.tenant_id)
        .cte("doing")
    )
    rows = json_rows("laid_out", id=Uuid, position=Integer, name=Text, status=Text, started_at=UTCDateTime, message=Text)
    laid_out = (
        insert(steps)
        .from_select(
            ("id", "job_id", "position", "name", "status", "started_at", "message", "output"),
            select(
                rows.c.id, doing.c.id, rows.c.position, rows.c.name, rows.c.status, rows.c.started_at, rows.c.message,
                literal(""),
            ).select_from(rows.join(doing, true())),
        )
        .cte("laid_out_steps")
    )  # fmt: skip
    return select(doing.c.id).add_cte(laid_out, _recorded_events(doing), tenant_move(doing.c.tenant_id).cte("moved_tenant"))


LAY_OUT = _lay_out()
# The tenant's move alone, the tenant bound as ``:moving_tenant``.
TENANT_MOVE = tenant_move(bindparam("moving_tenant"))
