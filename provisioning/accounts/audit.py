"""The audit trail: who did what, when and from where, written in the same transaction as the deed."""

from __future__ import annotations

import getpass
import os
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from provisioning.models import AuditEntry
from provisioning.platform.db import utcnow


@dataclass(frozen=True)
class Origin:
    """Who asks, and from where (an API request's address and user agent; none for the CLI)."""

    actor: str
    ip: str | None = None
    user_agent: str | None = None


SYSTEM = Origin(actor="system")
INSERT_ENTRY = insert(AuditEntry.__table__).inline()  # no entry's id is read back


def operator_at_the_console() -> Origin:
    try:
        login = getpass.getuser()
    except Exception:  # no login name for this uid (some containers)
        login = f"uid {os.getuid()}"
    return Origin(actor=f"cli {login}")


def record(
    session: Session, origin: Origin, action: str, tenant_id: uuid.UUID | None = None, target: str = "", detail: str = ""
) -> None:
    """Add an entry to the caller's transaction; it is kept only if the deed is."""
    session.flush()  # the deed's own rows first, when the ORM holds them: the entry may point at them
    session.connection().execute(INSERT_ENTRY, entry(origin, action, tenant_id, target, detail))


def entry(origin: Origin, action: str, tenant_id: uuid.UUID | None = None, target: str = "", detail: str = "") -> dict:
    """An entry's row, for ``record`` or for a statement that writes it with the deed."""
    return {
        "created_at": utcnow(),
        "actor": origin.actor,
        "action": action,
        "tenant_id": tenant_id,
        "target": target,
        "ip": origin.ip,
        "user_agent": (origin.user_agent or None) and origin.user_agent[:300],
        "detail": detail,
    }


def entries(
    session: Session, tenant_id: uuid.UUID | None = None, since: datetime | None = None, limit: int = 100
) -> list[AuditEntry]:
    """The newest entries first, optionally of one tenant and from a moment on."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    if since is not None:
        query = query.where(AuditEntry.created_at >= since)
    return list(session.scalars(query))
