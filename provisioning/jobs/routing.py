"""What a worker does with a job's message before it claims the job: run it, send it on to the
queue of the server it is to run on, or hold it while that server is down.

A message can reach the wrong server's worker: a dead letter replayed, a message published
before the tenant moved, one sent by hand, the retry of a move that resumes on the new server. Its
job is re-routed, never run on a bench that does not hold the site, and never failed or
dead-lettered for it. A pending job runs on its tenant's server, or on the server of the step it
starts at (a move's); a running job that another server's worker handed over (``handed_to``) on
that one. Any other message is for the claim to decide (a duplicate, or a late one).
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioning.enums import JobStatus, ServerStatus
from provisioning.jobs.records import Dispatch
from provisioning.jobs.repairs import JobRepairs
from provisioning.jobs.workflows import server_of, workflow_for
from provisioning.models import ProvisioningJob, Server, Tenant
from provisioning.servers.placement import Seat

log = logging.getLogger(__name__)


class JobRouting:
    """Routes the job messages of the worker of server ``server_name``, in the worker's own session
    (the runner's connection, before its claim): no connection or transaction of its own."""

    def __init__(self, session: Session, server_name: str, dispatch: Dispatch):
        self.session = session
        self.server_name = server_name
        self.dispatch = dispatch

    def runs_here(self, job_id: uuid.UUID) -> bool:
        """Whether this worker should go on to claim (or take over) the job: False once it has been
        sent to the queue of the server it is to run on, or held because that server is down. The
        read's transaction is left open for the claim when the job runs here.

        Raises:
            kombu / socket errors: the broker could not take the re-routed message (the caller's
                message is then not acknowledged as handled: it is retried).
        """
        seat = self._seat_of_job(job_id)
        if seat is None or seat.name == self.server_name and not seat.held:
            return True
        if seat.held:
            JobRepairs(self.session).hold(job_id, seat)
            self.session.commit()
            return False
        self.session.rollback()
        log.warning("job %s: it runs on server %s, not %s; sent to its queue", job_id, seat.name, self.server_name)
        self.dispatch(job_id, seat.name)
        return False

    def _seat_of_job(self, job_id: uuid.UUID) -> Seat | None:
        """The server the job is to run on next; None when the claim decides (no such job, or one
        neither pending nor handed over)."""
        jobs = ProvisioningJob
        row = self.session.execute(
            select(jobs.status, jobs.worker, jobs.handed_to, jobs.job_type, jobs.resume_from, jobs.options,
                   Server.name, Server.status)
            .join(Tenant, Tenant.id == jobs.tenant_id)
            .outerjoin(Server, Server.id == Tenant.server_id)
            .where(jobs.id == job_id)
        ).first()  # fmt: skip
        if row is None:
            return None
        status, worker, handed_to, job_type, resume_from, options, tenant_server, tenant_server_status = row
        if status == JobStatus.RUNNING and worker is None and handed_to:
            name = handed_to
        elif status == JobStatus.PENDING and tenant_server is not None:
            workflow = workflow_for(job_type)
            first = workflow.steps[workflow.position_of(resume_from) if resume_from else 0]
            name = server_of(first, options or {}) or tenant_server
        else:
            return None
        if name == tenant_server:
            return Seat(name, tenant_server_status)
        status = self.session.scalar(select(Server.status).where(Server.name == name))
        return Seat(name, status or ServerStatus.ACTIVE)
