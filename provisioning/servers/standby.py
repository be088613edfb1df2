"""Standby pools: sites each server makes ahead of time, so that a new tenant's site is a rename
away rather than a ``bench new-site`` (about a minute with ERPNext).

A server keeps ``standby_pool_size`` ready standby sites. Its pool's jobs (``refill_pool``) belong
to a tenant row of its own, status ``pool``, placed on the server, so they run on its queue,
one at a time (one active job per tenant), and are listed with that tenant's jobs. A pool job
first settles the pool (``settle``), then makes sites one by one (``next_to_make``), never more
than ``standby_batch`` and never the server's last free room: that stays for a real tenant.

A create_site reserves a ready standby site of its tenant's server in the request's transaction
(``reserve``: two requests never get the same one), and its worker claims it (``claim``, then
``claimed`` or ``give_up``). Every change is a compare-and-set on the row's status; the database
counts the sites that take room (``StandbyStatus``, migration 0014).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

from sqlalchemy import Select, Uuid, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provisioning.enums import ServerStatus, StandbyStatus, TenantStatus
from provisioning.models import ACTIVE_JOB_STATUSES, ProvisioningJob, Server, StandbySite, Tenant
from provisioning.platform.db import utcnow

# A pool tenant's slug: not a DNS label (it has a dot), so no customer's slug can be it.
POOL_SLUG = "pool.{server_id}"
# How long a claim cut short (its worker lost) is kept for the retry that resumes it, once its
# tenant has no job under way; after that, the pool drops what it left under its standby name.
CLAIM_RETRY_GRACE = timedelta(hours=1)
MAX_POOL_SIZE = 1000
# A pool job makes its batch one site after the other, within TASK_SOFT_TIME_LIMIT (25 minutes by
# default): ten ERPNext sites take 12 to 15 minutes on two cores.
MAX_BATCH = 10
standbys = StandbySite.__table__


@dataclass(frozen=True)
class PoolFigures:
    """What metrics and the doctor show of one server's pool."""

    server: str
    active: bool  # a server that is not active keeps no standby site: its pool drops them
    pool_size: int
    ready: int
    making: int
    discarded: int
    claimed_last_hour: int


# A create's standby site: the one its tenant reserved on the server already, else the oldest ready
# one no other request holds. Built once: it is on every create's request (``StandbyPool.reserve``).
RESERVABLE = (
    select(StandbySite.id, StandbySite.label, StandbySite.status)
    .join(Server, Server.id == StandbySite.server_id)
    .where(
        Server.name == bindparam("server"),
        (StandbySite.status == StandbyStatus.READY)
        | ((StandbySite.status == StandbyStatus.RESERVED) & (StandbySite.tenant_id == bindparam("tenant", type_=Uuid))),
    )
    .order_by(StandbySite.status == StandbyStatus.READY, StandbySite.ready_at, StandbySite.label)
    .limit(1)
    .with_for_update(skip_locked=True, of=StandbySite)
)


def new_label() -> str:
    return f"sb-{secrets.token_hex(5)}"


class StandbyPool:
    """Reads and changes standby sites in the caller's transaction (the caller commits)."""

    def __init__(self, session: Session):
        self.session = session

    # The pool's own tenant.

    def pool_tenant(self, server: Server) -> uuid.UUID:
        """The id of the server's pool tenant, made on first use (two sweepers at once make one)."""
        slug = POOL_SLUG.format(server_id=server.id.hex)
        if (found := self.session.scalar(select(Tenant.id).where(Tenant.slug == slug))) is not None:
            return found
        tenant = Tenant(
            id=uuid.uuid4(), slug=slug, name=f"Standby pool of server {server.name}", status=TenantStatus.POOL,
            server_id=server.id,
        )  # fmt: skip
        try:
            with self.session.begin_nested():
                self.session.add(tenant)
        except IntegrityError:
            return self.session.scalar(select(Tenant.id).where(Tenant.slug == slug))
        return tenant.id

    # A tenant's create.

    def reserve(self, tenant_id: uuid.UUID, server_name: str) -> str | None:
        """The label of a ready standby site of the server, now reserved for the tenant's create;
        None when it has none ready. One the tenant reserved there already (a create of its that
        ended before its claim) is its answer. A single statement when the server keeps no pool:
        this is on every create's request."""
        for _ in range(3):  # SQLite has no row locks: a lost compare-and-set looks again
            row = self.session.execute(RESERVABLE, {"tenant": tenant_id, "server": server_name}).first()
            if row is None or row.status == StandbyStatus.RESERVED:
                return row and row.label
            if self._move(row.id, StandbyStatus.READY, StandbyStatus.RESERVED, tenant_id=tenant_id):
                return row.label
        return None

    def release(self, tenant_id: uuid.UUID) -> None:
        """A create cancelled before it started gives its reserved standby site back to the pool."""
        self.session.execute(
            update(standbys)
            .where(standbys.c.tenant_id == tenant_id, standbys.c.status == StandbyStatus.RESERVED)
            .values(status=StandbyStatus.READY, tenant_id=None)
        )

    def claim(self, tenant_id: uuid.UUID, job_id: uuid.UUID) -> StandbySite | None:
        """The standby site reserved for the tenant (or being claimed by a job of its that was cut
        short), now this job's to rename; None when there is none any more."""
        site = self.session.scalar(
            select(StandbySite)
            .where(StandbySite.tenant_id == tenant_id, StandbySite.status.in_((StandbyStatus.RESERVED, StandbyStatus.CLAIMING)))
            .order_by(StandbySite.status == StandbyStatus.RESERVED)  # a claim cut short is finished first
            .limit(1)
        )
        if site is None or not self._move(site.id, site.status, StandbyStatus.CLAIMING, job_id=job_id):
            return None
        return site

    def claimed(self, label: str, job_id: uuid.UUID) -> None:
        """The job renamed the standby site: it is its tenant's site now."""
        self._move_label(label, StandbyStatus.CLAIMING, StandbyStatus.CLAIMED, job_id=job_id, claimed_at=utcnow())

    def give_up(self, label: str, job_id: uuid.UUID, reason: str) -> None:
        """The job could not claim the standby site (put back under its own name): it is dropped."""
        self._move_label(label, StandbyStatus.CLAIMING, StandbyStatus.DISCARDED, job_id=job_id, tenant_id=None, error=reason)

    # A pool job.

    def settle(self, server_id: uuid.UUID, job_id: uuid.UUID, fingerprint: str) -> dict[str, str]:
        """Put the server's pool in order before its job makes sites, and say which standby sites to
        drop, each with why: those half made by a pool job that ended, those made with another
        ``fingerprint`` (stale: never handed out), those beyond the pool's size or on a server that
        takes no new sites, those a claim gave up, and those a create began to claim and whose
        tenant has had no job since for CLAIM_RETRY_GRACE (its retry would resume the claim). A
        reservation whose create ended before its claim goes back to the pool."""
        tenant_busy = (
            select(ProvisioningJob.id)
            .where(ProvisioningJob.tenant_id == standbys.c.tenant_id, ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES))
            .exists()
        )
        since = utcnow() - CLAIM_RETRY_GRACE
        tenant_lately = (
            select(ProvisioningJob.id)
            .where(ProvisioningJob.tenant_id == standbys.c.tenant_id, ProvisioningJob.completed_at >= since)
            .exists()
        )
        mine = standbys.c.server_id == server_id
        self.session.execute(
            update(standbys).where(mine, standbys.c.status == StandbyStatus.RESERVED, ~tenant_busy)
            .values(status=StandbyStatus.READY, tenant_id=None)
        )  # fmt: skip
        reasons = {
            "half made by a pool job that ended": and_(
                standbys.c.status == StandbyStatus.MAKING, or_(standbys.c.job_id.is_(None), standbys.c.job_id != job_id)
            ),
            "a claim of it was cut short and not resumed": and_(
                standbys.c.status == StandbyStatus.CLAIMING, ~tenant_busy, ~tenant_lately
            ),
            "stale: made with other apps, app versions or site domain": and_(
                standbys.c.status == StandbyStatus.READY,
                or_(standbys.c.fingerprint.is_(None), standbys.c.fingerprint != fingerprint),
            ),
        }
        for reason, condition in reasons.items():
            self.session.execute(
                update(standbys).where(mine, condition).values(status=StandbyStatus.DISCARDED, tenant_id=None, error=reason)
            )
        self._discard_beyond_size(server_id)
        discarded = self.session.execute(
            select(standbys.c.label, standbys.c.error).where(mine, standbys.c.status == StandbyStatus.DISCARDED)
            .order_by(standbys.c.label)
        ).all()  # fmt: skip
        return {label: error or "discarded" for label, error in discarded}

    def _discard_beyond_size(self, server_id: uuid.UUID) -> None:
        """The ready sites beyond the pool's size (all of them on a server that takes no new sites), newest first."""
        server = self.session.get(Server, server_id, populate_existing=True)
        keep = server.standby_pool_size if server.status == ServerStatus.ACTIVE else 0
        ready = self.session.scalars(
            select(standbys.c.id).where(standbys.c.server_id == server_id, standbys.c.status == StandbyStatus.READY)
            .order_by(standbys.c.ready_at, standbys.c.label)
        ).all()  # fmt: skip
        if len(ready) > keep:
            self.session.execute(
                update(standbys).where(standbys.c.id.in_(ready[keep:]), standbys.c.status == StandbyStatus.READY)
                .values(status=StandbyStatus.DISCARDED, error="beyond the pool's size, or the server takes no new sites")
            )  # fmt: skip

    def dropped(self, label: str) -> None:
        self._move_label(label, StandbyStatus.DISCARDED, StandbyStatus.DROPPED, dropped_at=utcnow())

    def next_to_make(self, server_id: uuid.UUID, job_id: uuid.UUID, made: int) -> str | None:
        """The label of a new standby site for the pool job to make, recorded as being made; None
        once the pool is full, the job has made its batch, the server takes no new sites, or one
        more would take its last free room. The server's row is locked, as a placement locks it."""
        server = self.session.scalar(
            select(Server).where(Server.id == server_id).with_for_update().execution_options(populate_existing=True)
        )
        if server is None or server.status != ServerStatus.ACTIVE or made >= server.standby_batch:
            return None
        in_pool = self.session.scalar(
            select(func.count()).select_from(standbys).where(
                standbys.c.server_id == server_id, standbys.c.status.in_((StandbyStatus.MAKING, StandbyStatus.READY))
            )
        )  # fmt: skip
        if in_pool >= server.standby_pool_size or server.site_count + 1 >= server.capacity:
            return None
        label = new_label()
        self.session.execute(
            insert(standbys).values(
                id=uuid.uuid4(), server_id=server_id, label=label, status=StandbyStatus.MAKING, job_id=job_id, created_at=utcnow()
            )
        )
        return label

    def made(self, label: str, fingerprint: str) -> None:
        self._move_label(label, StandbyStatus.MAKING, StandbyStatus.READY, fingerprint=fingerprint, ready_at=utcnow())

    def failed_to_make(self, label: str, reason: str) -> None:
        self._move_label(label, StandbyStatus.MAKING, StandbyStatus.DISCARDED, error=reason)

    def making(self, job_id: uuid.UUID) -> list[str]:
        """What the pool job had begun to make (a cancel's undo drops them)."""
        return list(
            self.session.scalars(
                select(standbys.c.label).where(standbys.c.job_id == job_id, standbys.c.status == StandbyStatus.MAKING)
            )
        )

    # Figures.

    def wants_a_job(self, checked_since: datetime) -> Select:
        """The servers whose pool needs a job now: an active one with fewer sites ready or being
        made than its pool's size and room for one more, or any with standby sites to drop or
        ready ones it should not keep (beyond its size, or it takes no new sites); and any with
        ready sites whose pool had no job since ``checked_since``: its job finds the stale ones (the
        bench's apps changed since they were made) before a create does."""
        in_pool = (
            select(func.count()).select_from(standbys)
            .where(standbys.c.server_id == Server.id, standbys.c.status.in_((StandbyStatus.MAKING, StandbyStatus.READY)))
            .scalar_subquery()
        )  # fmt: skip
        ready = (
            select(func.count()).select_from(standbys)
            .where(standbys.c.server_id == Server.id, standbys.c.status == StandbyStatus.READY)
            .scalar_subquery()
        )  # fmt: skip
        to_drop = select(standbys.c.id).where(standbys.c.server_id == Server.id, standbys.c.status == StandbyStatus.DISCARDED)
        checked = (
            select(ProvisioningJob.id)
            .join(Tenant, Tenant.id == ProvisioningJob.tenant_id)
            .where(Tenant.server_id == Server.id, Tenant.status == TenantStatus.POOL, ProvisioningJob.created_at >= checked_since)
            .exists()
        )
        active = Server.status == ServerStatus.ACTIVE
        return (
            select(Server)
            .where(
                or_(
                    and_(active, in_pool < Server.standby_pool_size, Server.site_count + 1 < Server.capacity),
                    to_drop.exists(),
                    and_(active, ready > Server.standby_pool_size),
                    and_(~active, ready > 0),
                    and_(ready > 0, ~checked),
                )
            )
            .order_by(Server.name)
        )

    def counts(self, server_ids: Sequence[uuid.UUID] | None = None) -> dict[uuid.UUID, dict[StandbyStatus, int]]:
        """How many standby sites each server has ready, being made and to drop."""
        query = (
            select(standbys.c.server_id, standbys.c.status, func.count())
            .where(standbys.c.status.in_((StandbyStatus.READY, StandbyStatus.MAKING, StandbyStatus.DISCARDED)))
            .group_by(standbys.c.server_id, standbys.c.status)
        )
        if server_ids is not None:
            query = query.where(standbys.c.server_id.in_(server_ids))
        counts: dict[uuid.UUID, dict[StandbyStatus, int]] = {}
        for server_id, status, count in self.session.execute(query):
            counts.setdefault(server_id, {})[status] = count
        return counts

    def figures(self) -> list[PoolFigures]:
        """Every server's pool, by name: one query for the counts, one for the claims."""
        counts = self.counts()
        claims = dict(
            self.session.execute(
                select(standbys.c.server_id, func.count())
                .where(standbys.c.status == StandbyStatus.CLAIMED, standbys.c.claimed_at >= utcnow() - timedelta(hours=1))
                .group_by(standbys.c.server_id)
            ).all()
        )
        return [
            PoolFigures(
                server.name, server.status == ServerStatus.ACTIVE, server.standby_pool_size,
                ready=counts.get(server.id, {}).get(StandbyStatus.READY, 0),
                making=counts.get(server.id, {}).get(StandbyStatus.MAKING, 0),
                discarded=counts.get(server.id, {}).get(StandbyStatus.DISCARDED, 0),
                claimed_last_hour=claims.get(server.id, 0),
            )
            for server in self.session.scalars(select(Server).order_by(Server.name))
        ]  # fmt: skip

    def _move(self, site_id: uuid.UUID, source: StandbyStatus, target: StandbyStatus, **values) -> bool:
        moved = self.session.execute(
            update(standbys).where(standbys.c.id == site_id, standbys.c.status == source).values(status=target, **values)
        )
        return moved.rowcount == 1

    def _move_label(self, label: str, source: StandbyStatus, target: StandbyStatus, **values) -> bool:
        moved = self.session.execute(
            update(standbys).where(standbys.c.label == label, standbys.c.status == source).values(status=target, **values)
        )
        return moved.rowcount == 1
