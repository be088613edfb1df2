"""The statements that move a job: the compare-and-set of its status, its sources read from the
table of allowed moves (``states``), and the statements built once that make the move together
with the writes of its steps and events (``Boundary``)."""

from __future__ import annotations

from typing import Collection, Sequence

from sqlalchemy import Boolean, Integer, Text, Update, cast, func, insert, or_, select, true, update

from provisioning.enums import JobStatus
from provisioning.jobs.states import sources_of
from provisioning.models import JobEvent, JobStep, ProvisioningJob
from provisioning.platform.db import UTCDateTime, unnested

jobs = ProvisioningJob.__table__
steps = JobStep.__table__


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
        .where(jobs.c.id == job_id, jobs.c.status.in_(sorted(sources)), *conditions)
        .values(status=target, **(values or {}))
        .returning(jobs.c.id, jobs.c.status, *returning)
    )


class Boundary:
    """An UPDATE of one job's row (returning its ``id`` and ``status``, with bound parameters) and,
    built once with it, the statement that runs it on PostgreSQL with the writes of its steps and
    events: data-modifying CTEs that read the job's new row, the rows bound as arrays (``unnested``)."""

    def __init__(self, job_update: Update):
        self.job_update = job_update
        moved = job_update.cte("moved")
        running = moved.c.status == JobStatus.RUNNING
        step_rows = unnested(
            "written", position=Integer, status=Text, started_at=Text, finished_at=Text, output=Text, message=Text, always=Boolean
        )
        written = (
            update(steps)
            .where(steps.c.job_id == moved.c.id, steps.c.position == step_rows.c.position, or_(step_rows.c.always, running))
            .values(
                status=step_rows.c.status,
                started_at=func.coalesce(cast(step_rows.c.started_at, UTCDateTime), steps.c.started_at),
                finished_at=cast(step_rows.c.finished_at, UTCDateTime),
                output=step_rows.c.output,
                message=step_rows.c.message,
            )
            .cte("written_steps")
        )
        event_rows = unnested("recorded", kind=Text, actor=Text, detail=Text, created_at=Text, status=Text, always=Boolean)
        recorded = (
            insert(JobEvent.__table__)
            .from_select(
                ("job_id", "kind", "actor", "detail", "created_at", "status"),
                select(
                    moved.c.id, event_rows.c.kind, event_rows.c.actor, event_rows.c.detail,
                    cast(event_rows.c.created_at, UTCDateTime), event_rows.c.status,
                )
                .select_from(event_rows.join(moved, true()))
                .where(or_(event_rows.c.always, running)),
            )
            .cte("recorded_events")
        )  # fmt: skip
        self.together = select(moved).add_cte(written, recorded)
