"""What a worker does with a job's message before it claims the job: run it, send it on to the
queue of the server its tenant is on, or hold it while that server is down.

A message can reach the wrong server's worker: a dead letter replayed, a message published
before the tenant moved, one sent by hand. Its job is re-routed, never run on a bench that does
not hold the site, and never failed or dead-lettered for it. Only a pending job is routed: the
claim is what decides any other message (a duplicate, or a late one).
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session, sessionmaker

from provisioning.enums import JobStatus
from provisioning.jobs.records import Dispatch
from provisioning.jobs.repairs import JobRepairs
from provisioning.platform.db import UnitOfWork
from provisioning.servers.placement import Placement

log = logging.getLogger(__name__)


class JobRouting:
    """Routes the job messages of the worker of server ``server_name``."""

    def __init__(self, sessions: sessionmaker[Session], server_name: str, dispatch: Dispatch):
        self.sessions = sessions
        self.server_name = server_name
        self.dispatch = dispatch

    def runs_here(self, job_id: uuid.UUID) -> bool:
        """Whether this worker should go on to claim the job: False once it has been sent to its
        server's queue, or held because its server is down.

        Raises:
            kombu / socket errors: the broker could not take the re-routed message (the caller's
                message is then not acknowledged as handled: it is retried).
        """
        with self.sessions() as session:
            route = Placement(session).route_of(job_id)
            if route is None or route.status != JobStatus.PENDING or route.seat is None:
                return True
            seat = route.seat
            if seat.held:
                uow = UnitOfWork(session)
                JobRepairs(uow).hold(job_id, seat)
                uow.commit()
                return False
            if seat.name == self.server_name:
                return True
        log.warning("job %s: its tenant is on server %s, not %s; sent to its queue", job_id, seat.name, self.server_name)
        self.dispatch(job_id, seat.name)
        return False
