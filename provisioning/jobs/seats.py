"""Where a requested job runs: on its tenant's server, which a tenant with none gets now
(``servers.placement``), and for a move, from the tenant's server to the one it keeps room on;
the standby site a create claims there; and why a job that went on to another server cannot be
cancelled."""

from __future__ import annotations

import uuid
from typing import Callable, NoReturn

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from provisioning.enums import JobType, StepStatus, TenantStatus
from provisioning.errors import Conflict, NotFound
from provisioning.jobs.workflows import SOURCE, STANDBY, TARGET, Workflow, workflow_for
from provisioning.models import JobStep, ProvisioningJob, Server, Tenant
from provisioning.servers.placement import Placement, Seat
from provisioning.servers.standby import StandbyPool

# The create_site options that say where a tenant with no server is placed: labels the server
# must have ({"region": "eu"}), or the name of the server (operators only, checked by the API).
PLACEMENT_LABELS = "labels"
PINNED_SERVER = TARGET


def seat_of_job(
    session: Session, tenant_id: uuid.UUID, workflow: Workflow, options: dict, refuse: Callable[[], NoReturn]
) -> Seat:
    """The tenant's server, where it is placed now if it has none.

    A create that names another server than the one the tenant is on (a failed tenant's) is
    refused: what its failed create left is on its server. A tenant on no server whose state
    refuses the job (a job other than a create of a pending tenant) is refused for that reason
    first (``refuse`` raises it): the client learns why, not that no server has room, and no
    server's row is locked for a job that cannot be.

    Raises:
        NotFound: no such tenant, or no server the option ``server`` names.
        Conflict: what ``refuse`` raises; a create pinned elsewhere; no server has room (``Placement.place``).
    """
    # One read for both questions: where is it, and may it have the job.
    row = session.execute(
        select(Tenant.status, Server.name, Server.status)
        .outerjoin(Server, Server.id == Tenant.server_id)
        .where(Tenant.id == tenant_id)
    ).first()
    if row is None:
        raise NotFound("tenant not found")
    tenant_status, server_name, server_status = row
    if server_name is not None:
        pinned = options.get(PINNED_SERVER)
        if workflow.job_type == JobType.CREATE_SITE and pinned not in (None, server_name):
            raise Conflict(f"the tenant is on server {server_name} already (its failed site is there); move_site moves it")
        return Seat(server_name, server_status)
    if not workflow.allows(tenant_status):
        refuse()
    return Placement(session).place(tenant_id, options.get(PLACEMENT_LABELS), options.get(PINNED_SERVER))


def reserve_standby(session: Session, tenant_id: uuid.UUID, seat: Seat, options: dict) -> dict:
    """A create's options, with the standby site it reserved on the tenant's server (``STANDBY``),
    if one is ready: its claim makes the site in seconds. Reserved in the request's transaction:
    two creates never get the same one, and a request that fails reserves nothing."""
    label = StandbyPool(session).reserve(tenant_id, seat.name)
    return {**options, STANDBY: label} if label else options


def release_siteless_tenant(session: Session, tenant_id: uuid.UUID) -> None:
    """A tenant still pending when its create is cancelled before it started never had a site: it
    leaves the server its create placed it on, whose room it took, as it does when a create is
    cancelled while it runs (``records.tenant_move_parameters``), and gives back the standby site
    it reserved. A failed tenant keeps its server, which holds what its failed create left."""
    StandbyPool(session).release(tenant_id)
    tenants = Tenant.__table__
    session.execute(
        update(tenants).where(tenants.c.id == tenant_id, tenants.c.status == TenantStatus.PENDING).values(server_id=None)
    )


def move_options(session: Session, tenant_id: uuid.UUID, options: dict) -> dict:
    """A move's options with the two servers it runs on: the tenant's (``from_server``), and the
    one it keeps room on (``server``: the one asked for, or the emptiest other one).

    Raises:
        NotFound / Conflict: as ``Placement.reserve_move``.
    """
    source, target = Placement(session).reserve_move(tenant_id, options.get(TARGET))
    return {**options, TARGET: target.name, SOURCE: source.name}


def check_cancellable(session: Session, job: ProvisioningJob) -> None:
    """Raises Conflict once the running job has reached its ``no_cancel_from`` step, or finished the
    step before it (it may be handing its work to another server's worker): it finishes instead."""
    workflow = workflow_for(job.job_type)
    if workflow.no_cancel_from is None:
        return
    at = workflow.position_of(workflow.no_cancel_from)
    started = session.scalar(
        select(func.count()).select_from(JobStep).where(
            JobStep.job_id == job.id,
            ((JobStep.position >= at) & (JobStep.status != StepStatus.PENDING))
            | ((JobStep.position == at - 1) & (JobStep.status == StepStatus.COMPLETED)),
        )
    )
    if started:
        raise Conflict(
            f"job is past {workflow.steps[at - 1].name}: a {job.job_type.value} cannot be stopped once it hands its "
            "work to the new server; it finishes (a failure there is finished by its retry)"
        )
