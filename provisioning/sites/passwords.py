"""The site's admin password shown to its owner once: the first reveal marks it, later ones are refused."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from provisioning.accounts import audit
from provisioning.accounts.audit import SYSTEM, Origin
from provisioning.errors import Conflict, Gone, NotFound
from provisioning.models import Tenant
from provisioning.platform.db import utcnow
from provisioning.sites.credentials import CredentialsUnavailable, SiteCredentials

# The frappe user whose password this is: the one every new site is created with.
SITE_USER = "Administrator"


@dataclass(frozen=True)
class RevealedPassword:
    site_user: str
    password: str = field(repr=False)
    revealed_at: datetime


def reveal_admin_password(
    session: Session, tenant_id: uuid.UUID, credentials: SiteCredentials, origin: Origin = SYSTEM
) -> RevealedPassword:
    """Hand out the site's admin password, once: the first call marks it revealed and returns it,
    every later one is refused. Commits.

    The mark is a compare-and-set (``UPDATE ... WHERE admin_password_revealed_at IS NULL``), so of
    concurrent callers exactly one wins; the others wait on its row lock and then find it set. The
    password is decrypted before the mark commits: when it cannot be, nothing is marked and the
    owner can ask again once the key is fixed.

    Raises:
        Conflict: the site has no password yet (no create_site has started since the last delete).
        Gone: it was revealed already.
        CredentialsUnavailable: no key is configured, or the stored value does not open with it.
    """
    now = utcnow()
    stored = session.scalar(
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.admin_password_encrypted.is_not(None), Tenant.admin_password_revealed_at.is_(None))
        .values(admin_password_revealed_at=now)
        .returning(Tenant.admin_password_encrypted)
    )
    if stored is None:
        raise _why_not_revealable(session, tenant_id)
    try:
        password = credentials.decrypt(stored)
    except CredentialsUnavailable as unavailable:
        session.rollback()
        raise CredentialsUnavailable(f"{unavailable}; the password stays unrevealed, ask again once this is fixed") from None
    audit.record(session, origin, "site.admin_password_revealed", tenant_id, target=SITE_USER)
    session.commit()
    return RevealedPassword(site_user=SITE_USER, password=password, revealed_at=now)


def _why_not_revealable(session: Session, tenant_id: uuid.UUID) -> Exception:
    tenant = session.get(Tenant, tenant_id, populate_existing=True)
    if tenant is None:
        return NotFound("tenant not found")
    if tenant.admin_password_revealed_at is not None:
        return Gone(
            f"the site's admin password was revealed at {tenant.admin_password_revealed_at.isoformat(timespec='seconds')}; "
            "it can be read only once and is not stored readable anywhere else"
        )
    return Conflict("the site has no admin password yet: one is made when a create_site job starts")
