"""The standby sites of one job, as its driver's steps see them (``StepContext.standby``): a
create's claim of the one reserved for it, a pool job's sites to drop and to make. Each call is a
short transaction of its own, so what a step did is on record even if the step dies right after."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioning.jobs.workflows import STANDBY
from provisioning.models import ProvisioningJob, Tenant
from provisioning.servers.standby import StandbyPool


class JobStandbyBook:
    """``options`` is the job's context's own: a claim given up removes ``STANDBY`` from it (and
    from the job's row, for its retry), so the steps that make a site run instead."""

    def __init__(self, sessions: sessionmaker[Session], job_id: uuid.UUID, tenant_id: uuid.UUID, options: dict):
        self._sessions = sessions
        self._job_id = job_id
        self._tenant_id = tenant_id
        self._options = options

    def to_claim(self) -> tuple[str, str | None] | None:
        """The label and fingerprint of the standby site reserved for this job's tenant, now this
        job's to rename; None when there is none any more (the pool gave it back or discarded it)."""
        with self._sessions() as session:
            site = StandbyPool(session).claim(self._tenant_id, self._job_id)
            session.commit()
            return (site.label, site.fingerprint) if site else None

    def claimed(self, label: str) -> None:
        self._change(lambda pool: pool.claimed(label, self._job_id))

    def give_up(self, label: str | None, reason: str) -> None:
        """No claim (of ``label``, put back under its own name, if it got that far): the site is made instead."""
        self._options.pop(STANDBY, None)
        with self._sessions() as session:
            if label is not None:
                StandbyPool(session).give_up(label, self._job_id, reason)
            jobs = ProvisioningJob.__table__
            session.execute(update(jobs).where(jobs.c.id == self._job_id).values(options=dict(self._options)))
            session.commit()

    def to_drop(self, fingerprint: str) -> dict[str, str]:
        """The pool's sites to drop, each with why, once the pool is settled (``StandbyPool.settle``)."""
        return self._change(lambda pool: pool.settle(self._server_id(pool.session), self._job_id, fingerprint))

    def dropped(self, label: str) -> None:
        self._change(lambda pool: pool.dropped(label))

    def to_make(self, made: int) -> str | None:
        """The label of the next standby site to make, None once the pool has what it needs."""
        return self._change(lambda pool: pool.next_to_make(self._server_id(pool.session), self._job_id, made))

    def made(self, label: str, fingerprint: str) -> None:
        self._change(lambda pool: pool.made(label, fingerprint))

    def failed_to_make(self, label: str, reason: str) -> None:
        self._change(lambda pool: pool.failed_to_make(label, reason))

    def making(self) -> list[str]:
        with self._sessions() as session:
            return StandbyPool(session).making(self._job_id)

    def _server_id(self, session: Session) -> uuid.UUID:
        return session.scalar(select(Tenant.server_id).where(Tenant.id == self._tenant_id))

    def _change(self, change):
        with self._sessions() as session:
            result = change(StandbyPool(session))
            session.commit()
            return result
