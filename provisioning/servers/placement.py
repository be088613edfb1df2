"""Where a tenant's site lives: placing a tenant on a bench server when its first job is asked for,
moving it to another. Placement is race-free: a server's row is locked while a tenant
is placed on it, and its count of sites (kept by the database, migration 0012) is checked under
that lock, so two requests at once never put more sites on a server than its capacity.

A tenant leaves its server when its site is deleted, or when the create that placed it is
cancelled (``records.tenant_move_parameters``); its next create places it again. A move keeps
room on the server it moves to (``reserve_move``) until it switches the tenant there (``switch``)
or is cancelled.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Mapping

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from provisioning.enums import ServerStatus
from provisioning.errors import Conflict, NotFound
from provisioning.models import Server, Tenant


@dataclass(frozen=True)
class Seat:
    """The server a tenant's jobs run on: its name (which gives its queue) and status."""

    name: str
    status: ServerStatus

    @property
    def held(self) -> bool:
        """A down server's jobs wait, pending, until it is active again."""
        return self.status == ServerStatus.DOWN

    def hold_message(self) -> str:
        return f"Held: server {self.name} is down; the job is sent when the server is active again"


class Placement:
    """Places tenants and answers where their jobs run; writes in the caller's transaction."""

    def __init__(self, session: Session):
        self.session = session

    def seat_of(self, tenant_id: uuid.UUID) -> Seat | None:
        """The tenant's server, None when it is not placed (or does not exist)."""
        row = self.session.execute(
            select(Server.name, Server.status).join(Tenant, Tenant.server_id == Server.id).where(Tenant.id == tenant_id)
        ).first()
        return Seat(*row) if row else None

    def place(self, tenant_id: uuid.UUID, labels: Mapping[str, str] | None = None, pin: str | None = None) -> Seat:
        """Place the unplaced tenant on the active server with room and the fewest sites, among
        those whose labels include all of ``labels``; or on the server ``pin`` (an operator's
        choice), if it is active and has room.

        Raises:
            NotFound: no server named ``pin``.
            Conflict: no server fits (the message says why).
        """
        labels = dict(labels or {})
        if pin is not None:
            self._check_pin(pin)
        if (found := self._first_with_room(self._candidates(pin), labels)) is not None:
            return self._place_on(tenant_id, *found)
        if pin is not None:
            raise Conflict(f"server {pin!r} is full or not active; it cannot take this site now")
        wanted = f" with labels {', '.join(f'{k}={v}' for k, v in sorted(labels.items()))}" if labels else ""
        raise Conflict(f"no active server{wanted} has room for another site; add a server or raise a capacity")

    def reserve_move(self, tenant_id: uuid.UUID, target: str | None) -> tuple[Seat, Seat]:
        """Keep room for the tenant's site on the server ``target`` (None: the active server with
        room and the fewest sites, other than its own), as for a placement; returns the tenant's
        server and that one. A move asked for again (its retry, or a new move of a tenant whose
        move failed) keeps the room it had, or gives it up for the new target.

        Raises:
            NotFound: no such tenant, or no server named ``target``.
            Conflict: the tenant is on no server, or on ``target`` already; no server fits.
        """
        source = self.seat_of(tenant_id)
        if source is None:
            raise Conflict("the tenant is on no server: it has no site to move")
        if target == source.name:
            raise Conflict(f"the site is on server {target} already")
        tenants = Tenant.__table__
        self.session.execute(update(tenants).where(tenants.c.id == tenant_id).values(target_server_id=None))
        if target is not None:
            self._check_pin(target)
        if (found := self._first_with_room(self._candidates(target).where(Server.name != source.name))) is not None:
            server_id, name = found
            self.session.execute(update(tenants).where(tenants.c.id == tenant_id).values(target_server_id=server_id))
            return source, Seat(name, ServerStatus.ACTIVE)
        if target is not None:
            raise Conflict(f"server {target!r} is full or not active; it cannot take this site now")
        raise Conflict("no other active server has room for this site; add a server or raise a capacity")

    def switch(self, tenant_id: uuid.UUID, target: str) -> bool:
        """Make the server ``target`` the tenant's, from the room its move kept there; False if it
        is the tenant's already (a step run again). From here the site is served from there."""
        tenants = Tenant.__table__
        target_id = select(Server.id).where(Server.name == target).scalar_subquery()
        switched = self.session.execute(
            update(tenants)
            .where(tenants.c.id == tenant_id, tenants.c.target_server_id == target_id)
            .values(server_id=tenants.c.target_server_id, target_server_id=None)
        )
        if switched.rowcount:
            return True
        if (seat := self.seat_of(tenant_id)) is None or seat.name != target:
            raise Conflict(f"the tenant has no room kept on server {target}: its move cannot switch there")
        return False

    @staticmethod
    def _candidates(named: str | None) -> Select:
        """The active servers with room (of them, the one ``named``, if given), the emptiest first."""
        query = select(Server.id, Server.name, Server.labels).where(
            Server.status == ServerStatus.ACTIVE, Server.site_count < Server.capacity
        )
        if named is not None:
            query = query.where(Server.name == named)
        return query.order_by(Server.site_count, Server.name)

    def _first_with_room(self, candidates: Select, labels: Mapping[str, str] | None = None) -> tuple[uuid.UUID, str] | None:
        """The first candidate with every label of ``labels`` that still has room once its row is
        ours (``_has_room``): its id and name, its row locked until the caller commits."""
        for server_id, name, server_labels in self.session.execute(candidates).all():
            if (labels or {}).items() <= (server_labels or {}).items() and self._has_room(server_id):
                return server_id, name
        return None

    def _has_room(self, server_id: uuid.UUID) -> bool:
        """Lock the server's row, and say whether it is still active with room: a request that
        placed a tenant there meanwhile has committed by the time the lock is ours, and PostgreSQL
        checks the condition again on the row as that request left it."""
        locked = self.session.scalar(
            select(Server.id)
            .where(Server.id == server_id, Server.status == ServerStatus.ACTIVE, Server.site_count < Server.capacity)
            .with_for_update()
        )
        return locked is not None

    def _place_on(self, tenant_id: uuid.UUID, server_id: uuid.UUID, name: str) -> Seat:
        """Place the tenant on the server whose row we hold; if another request placed it first
        (a request of the same tenant at the same moment), where that one did."""
        tenants = Tenant.__table__
        placed = self.session.execute(
            update(tenants).where(tenants.c.id == tenant_id, tenants.c.server_id.is_(None)).values(server_id=server_id)
        )
        if placed.rowcount == 1:
            return Seat(name, ServerStatus.ACTIVE)
        seat = self.seat_of(tenant_id)
        if seat is None:
            raise NotFound("tenant not found")
        return seat

    def _check_pin(self, pin: str) -> None:
        if self.session.scalar(select(Server.id).where(Server.name == pin)) is None:
            raise NotFound(f"no server named {pin!r}")
