"""The registry of bench servers, as operators keep it: add, list, drain, activate, mark down,
change and remove servers; every change audited in the caller's transaction (the caller commits)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Mapping, Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provisioning.accounts import audit
from provisioning.accounts.audit import Origin
from provisioning.enums import JobStatus, ServerStatus, StandbyStatus, TenantStatus
from provisioning.errors import Conflict, InvalidRequest, NotFound
from provisioning.models import ACTIVE_JOB_STATUSES, ProvisioningJob, Server, Tenant
from provisioning.platform.identifiers import SLUG
from provisioning.servers.standby import MAX_BATCH, MAX_POOL_SIZE, StandbyPool

DEFAULT_CAPACITY = 100
# More sites than any bench server holds; well inside PostgreSQL's integer.
MAX_CAPACITY = 1_000_000
MAX_LABELS = 20
MAX_LABEL_LENGTH = 63


@dataclass(frozen=True)
class ServerView:
    """A server as operators see it: its row, the jobs its sites (and its pool) have under way,
    and its standby sites ready and being made."""

    server: Server
    active_jobs: int
    standby_ready: int = 0
    standby_making: int = 0


@dataclass(frozen=True)
class ServerFigures:
    """What metrics and the doctor show of one server."""

    name: str
    status: ServerStatus
    site_count: int
    capacity: int
    active_jobs: int
    pending_jobs: int


def checked_labels(labels: Mapping[str, object]) -> dict[str, str]:
    """Labels as stored: short lowercase names and values, such as ``region=eu``.

    Raises:
        InvalidRequest: too many, or a name or value that is not a short lowercase word.
    """
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"at most {MAX_LABELS} labels")
    for name, value in labels.items():
        for what, text in (("label name", name), ("label value", value)):
            if problem := SLUG.problem(what, text):
                raise InvalidRequest(problem)
    return {str(name): str(value) for name, value in labels.items()}


class ServerRegistry:
    """Operators' view and changes of the bench servers; ``origin`` is who asks, for the audit trail."""

    def __init__(self, session: Session, origin: Origin):
        self.session = session
        self.origin = origin

    def add(self, name: str, capacity: int = DEFAULT_CAPACITY, labels: Mapping[str, object] | None = None) -> Server:
        """A new active server.

        Raises:
            InvalidRequest: a name that is not a DNS label, a capacity below 1, bad labels.
            Conflict: a server of that name exists.
        """
        if problem := SLUG.problem("server name", name):
            raise InvalidRequest(problem)
        server = Server(
            id=uuid.uuid4(), name=name, status=ServerStatus.ACTIVE, capacity=_checked_capacity(capacity),
            labels=checked_labels(labels or {}), site_count=0,
        )  # fmt: skip
        try:
            with self.session.begin_nested():
                self.session.add(server)
        except IntegrityError:
            raise Conflict(f"a server named {name!r} exists already") from None
        self._audit("server.added", server, f"capacity {server.capacity}, labels {server.labels}")
        return server

    def get(self, name: str) -> Server:
        """Raises NotFound."""
        server = self.session.scalar(select(Server).where(Server.name == name))
        if server is None:
            raise NotFound(f"no server named {name!r}")
        return server

    def list(self, page: int = 1, size: int = 20, status: ServerStatus | None = None) -> tuple[list[ServerView], int]:
        """One page of servers by name, with their active jobs, and how many there are."""
        conditions = [Server.status == status] if status is not None else []
        total = self.session.scalar(select(func.count()).select_from(Server).where(*conditions)) or 0
        servers = self.session.scalars(
            select(Server).where(*conditions).order_by(Server.name).limit(size).offset((page - 1) * size)
        ).all()
        return self._views(servers), total

    def view(self, name: str) -> ServerView:
        return self._views([self.get(name)])[0]

    def _views(self, servers: Sequence[Server]) -> list[ServerView]:
        ids = [server.id for server in servers]
        busy, pools = self.active_jobs(ids), StandbyPool(self.session).counts(ids)
        return [
            ServerView(
                server, busy.get(server.id, 0),
                standby_ready=pools.get(server.id, {}).get(StandbyStatus.READY, 0),
                standby_making=pools.get(server.id, {}).get(StandbyStatus.MAKING, 0),
            )
            for server in servers
        ]  # fmt: skip

    def active_jobs(self, server_ids: Sequence[uuid.UUID] | None = None) -> dict[uuid.UUID, int]:
        """How many pending, running or cancelling jobs the tenants of each server have."""
        return {server_id: sum(counts.values()) for server_id, counts in self._job_counts(server_ids).items()}

    def _job_counts(self, server_ids: Sequence[uuid.UUID] | None = None) -> dict[uuid.UUID, dict[JobStatus, int]]:
        """Each server's active jobs, by status (of the servers given, or all)."""
        query = (
            select(Tenant.server_id, ProvisioningJob.status, func.count())
            .join(ProvisioningJob, ProvisioningJob.tenant_id == Tenant.id)
            .where(ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES), Tenant.server_id.is_not(None))
            .group_by(Tenant.server_id, ProvisioningJob.status)
        )
        if server_ids is not None:
            query = query.where(Tenant.server_id.in_(server_ids))
        counts: dict[uuid.UUID, dict[JobStatus, int]] = {}
        for server_id, status, count in self.session.execute(query):
            counts.setdefault(server_id, {})[status] = count
        return counts

    def figures(self) -> list[ServerFigures]:
        """Every server's figures, by name: two queries, whatever the number of servers."""
        counts = self._job_counts()
        return [
            ServerFigures(
                server.name, server.status, server.site_count, server.capacity,
                active_jobs=sum(counts.get(server.id, {}).values()),
                pending_jobs=counts.get(server.id, {}).get(JobStatus.PENDING, 0),
            )
            for server in self.session.scalars(select(Server).order_by(Server.name))
        ]  # fmt: skip

    def set_status(self, name: str, status: ServerStatus) -> Server:
        """Drain, activate or mark down a server; setting the status it has changes nothing.

        Jobs held for a server that was down are sent by the next sweep once it is active again
        (``JobRepairs.republish_pending``); the caller may send them at once.
        """
        server = self._locked(name)
        if server.status != status:
            before, server.status = server.status, status
            self._audit(f"server.{status.value}", server, f"was {before.value}")
        return server

    def update(
        self,
        name: str,
        capacity: int | None = None,
        labels: Mapping[str, object] | None = None,
        standby_pool_size: int | None = None,
        standby_batch: int | None = None,
    ) -> Server:
        """Change a server's capacity, labels or standby pool (its size, 0 for none, and how many
        sites one pool job makes at most). A capacity below its sites is allowed (it takes no new
        ones until it is below again): that is how an operator stops a full server growing.

        Raises:
            InvalidRequest: a capacity below 1, bad labels, a pool size or batch out of range.
        """
        server = self._locked(name)
        changes = []
        if capacity is not None:
            server.capacity = _checked_capacity(capacity)
            changes.append(f"capacity {server.capacity}")
        if labels is not None:
            server.labels = checked_labels(labels)
            changes.append(f"labels {server.labels}")
        if standby_pool_size is not None:
            server.standby_pool_size = _checked_count(standby_pool_size, "standby pool size", 0, MAX_POOL_SIZE)
            changes.append(f"standby pool size {server.standby_pool_size}")
        if standby_batch is not None:
            server.standby_batch = _checked_count(standby_batch, "standby batch", 1, MAX_BATCH)
            changes.append(f"standby batch {server.standby_batch}")
        if changes:
            self._audit("server.updated", server, ", ".join(changes))
        return server

    def remove(self, name: str) -> None:
        """Remove the server, and its standby pool's tenant with the pool's job history.

        Raises:
            Conflict: a tenant is placed on the server (move or delete its sites first), it holds
                standby sites (a drained server's pool drops them), or its pool has a job under way.
        """
        server = self._locked(name)
        if server.site_count:
            raise Conflict(
                f"server {name!r} still holds {server.site_count} site(s), standby sites included; "
                "drain it (its pool drops its standby sites) and move its tenants' sites first"
            )
        pool = self.session.scalar(select(Tenant).where(Tenant.server_id == server.id, Tenant.status == TenantStatus.POOL))
        if pool is not None:
            if self.active_jobs([server.id]):
                raise Conflict(f"server {name!r} has a standby pool job under way; remove it once that job ends")
            self.session.delete(pool)
        self._audit("server.removed", server, "")
        self.session.delete(server)
        self.session.flush()

    def _locked(self, name: str) -> Server:
        """The server, its row locked until the caller commits: against a placement at the same moment."""
        server = self.session.scalar(
            select(Server).where(Server.name == name).with_for_update().execution_options(populate_existing=True)
        )
        if server is None:
            raise NotFound(f"no server named {name!r}")
        return server

    def _audit(self, action: str, server: Server, detail: str) -> None:
        audit.record(self.session, self.origin, action, None, f"server {server.name}", detail)


def _checked_count(count: int, what: str, least: int, most: int) -> int:
    if not isinstance(count, int) or not least <= count <= most:
        raise InvalidRequest(f"{what} must be a whole number from {least} to {most:,} (not {count!r})")
    return count


def _checked_capacity(capacity: int) -> int:
    if not isinstance(capacity, int) or not 1 <= capacity <= MAX_CAPACITY:
        raise InvalidRequest(f"capacity must be a whole number of sites, from 1 to {MAX_CAPACITY:,} (not {capacity!r})")
    return capacity
