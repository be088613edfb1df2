"""API tokens: issued with scopes and an expiry, shown once, listed and revoked by id, all of a
user's revoked at once. Each function is one transaction, committed, with its audit entries."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisioning.accounts import audit
from provisioning.accounts.audit import SYSTEM, Origin
from provisioning.accounts.authentication import TOKEN_PREFIX, hash_token
from provisioning.accounts.checks import text
from provisioning.accounts.scopes import allowed_scopes, stored_scopes
from provisioning.enums import Scope
from provisioning.errors import Conflict, NotFound, Unprocessable
from provisioning.models import ApiToken, Membership, Tenant, User
from provisioning.platform.db import page_of, utcnow

MAX_TOKEN_NAME_LENGTH = 100  # api_tokens.name
# A token lives at most this long whatever the settings say: an expiry must stay a date the
# database and Python can hold. TOKEN_MAX_LIFETIME_DAYS is the deployment's own, shorter limit.
MAX_TOKEN_LIFETIME = timedelta(days=3650)


def issue_token(
    session: Session,
    user: User,
    name: str = "",
    expires_in: timedelta | None = None,
    origin: Origin = SYSTEM,
    *,
    scopes: frozenset[Scope] | None = None,
    tenant: Tenant | None = None,
    max_lifetime: timedelta = MAX_TOKEN_LIFETIME,
) -> tuple[ApiToken, str]:
    """Create a token; the returned plain text is the only copy there will ever be (not even the
    audit trail keeps it: only the token's id and prefix).

    ``scopes`` default to all the user's role allows (its best role, or its role in ``tenant``);
    ``expires_in`` to ``max_lifetime``. A token with a ``tenant`` acts for that tenant only, one
    its user is a member of, and never has the platform scope.

    Raises:
        InvalidRequest: a name too long or with control characters.
        Unprocessable: a lifetime beyond ``max_lifetime``, or a scope the user's role does not allow.
        NotFound: the user is not a member of ``tenant``.
        Conflict: the user is disabled.
    """
    name = text("token name", name, MAX_TOKEN_NAME_LENGTH)
    if user.disabled_at is not None:
        raise Conflict(f"{user.email} is disabled and can be given no token")
    expires_in = max_lifetime if expires_in is None else expires_in
    if not timedelta(0) < expires_in <= max_lifetime:
        raise Unprocessable("expires_in_days", f"a token expires after 1 to {max_lifetime.days} days")
    allowed = _allowed(session, user, tenant)
    scopes = allowed if scopes is None else scopes
    if not scopes:
        raise Unprocessable("scopes", "a token needs at least one scope")
    if excess := scopes - allowed:
        where = f" in {tenant.slug}" if tenant is not None else ""
        raise Unprocessable(
            "scopes", f"{user.email}'s role{where} does not allow the scope {', '.join(map(repr, stored_scopes(excess)))}"
        )
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=hash_token(plain),
        prefix=plain[: len(TOKEN_PREFIX) + 6],
        expires_at=utcnow() + expires_in,
        scopes=stored_scopes(scopes),
        tenant_id=tenant.id if tenant is not None else None,
    )
    session.add(token)
    session.flush()
    detail = f"{token.prefix}... {name} scopes {','.join(token.scopes)} expires {token.expires_at.isoformat(timespec='seconds')}"
    audit.record(session, origin, "token.created", token.tenant_id, f"token {token.id} of {user.email}", detail)
    session.commit()
    return token, plain


def revoke_token(
    session: Session,
    token_id: uuid.UUID,
    origin: Origin = SYSTEM,
    *,
    user_id: uuid.UUID | None = None,
    tenant_id: uuid.UUID | None = None,
) -> ApiToken:
    """Revoke a token by id (only one of ``user_id``'s, or bound to ``tenant_id``, when given:
    another's is not found); revoking it again keeps the first revocation time."""
    token = _find(session, token_id, user_id, tenant_id)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, origin, "token.revoked", token.tenant_id, f"token {token.id}", f"{token.prefix}...")
        session.commit()
    return token


def revoke_all_tokens(session: Session, user: User, origin: Origin = SYSTEM) -> int:
    """Revoke every usable token of ``user`` at once; how many. One transaction, committed."""
    revoked = revoke_every_token(session, user, origin)
    session.commit()
    return revoked


def revoke_every_token(session: Session, user: User, origin: Origin) -> int:
    """As ``revoke_all_tokens``, in the caller's transaction (disabling a user does it with the rest)."""
    revoked = session.execute(
        update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    ).rowcount
    audit.record(session, origin, "tokens.revoked_all", target=user.email, detail=f"{revoked} token(s)")
    return revoked


def revoke_tenant_tokens(session: Session, user_id: uuid.UUID, tenant_id: uuid.UUID) -> int:
    """Revoke the user's tokens bound to the tenant, in the caller's transaction (its membership is going)."""
    return session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user_id, ApiToken.tenant_id == tenant_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    ).rowcount


def list_tokens(
    session: Session, user_id: uuid.UUID | None = None, tenant_id: uuid.UUID | None = None, page: int = 1, size: int = 20
) -> tuple[list[ApiToken], int]:
    """A page of tokens, newest first: one user's, or those bound to one tenant (never the tokens themselves)."""
    query = select(ApiToken).order_by(ApiToken.created_at.desc(), ApiToken.id)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    if tenant_id is not None:
        query = query.where(ApiToken.tenant_id == tenant_id)
    rows, total = page_of(session, query, page, size)
    return [row[0] for row in rows], total


def _allowed(session: Session, user: User, tenant: Tenant | None) -> frozenset[Scope]:
    """The scopes ``user`` may give a token: by its best role, or by its role in ``tenant``."""
    roles = select(Membership.role).where(Membership.user_id == user.id)
    if tenant is None:
        return allowed_scopes(user.is_superuser, session.scalars(roles))
    role = session.scalar(roles.where(Membership.tenant_id == tenant.id))
    if role is None:
        raise NotFound(f"{user.email} is not a member of {tenant.slug}")
    # A tenant's token acts in the tenant's name, in its user's role there: never as an operator,
    # whoever holds it (see ``TokenHolder.is_operator``).
    return allowed_scopes(False, (role,))


def _find(session: Session, token_id: uuid.UUID, user_id: uuid.UUID | None, tenant_id: uuid.UUID | None) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None or user_id not in (None, token.user_id) or tenant_id not in (None, token.tenant_id):
        raise NotFound(f"no token with id {token_id}")
    return token
