"""Who a request's bearer token speaks for, what it may do and for which tenant: one query per
request (it is on every request's path), and a cheap write of the token's last use."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from provisioning.accounts.scopes import allowed_scopes, granted_scopes, require_scope
from provisioning.enums import WRITER_ROLES, Role, Scope, TenantStatus
from provisioning.errors import AuthenticationFailed, Forbidden, InvalidRequest, MissingCredentials, NotFound
from provisioning.models import ApiToken, Membership, Tenant, User
from provisioning.platform.db import utcnow
from provisioning.platform.identifiers import SLUG, UUID
from provisioning.platform.quoting import quoted

TOKEN_PREFIX = "erpx_"
# A token's last use is written at most this often, so reads do not each cost a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

# What a request needs to know of its token, its user and a tenant: columns, not model objects,
# which cost a request more to make than the query that reads them.
TOKEN_COLUMNS = (
    ApiToken.id, ApiToken.revoked_at, ApiToken.expires_at, ApiToken.last_used_at, ApiToken.scopes, ApiToken.tenant_id,
    User.disabled_at,
)  # fmt: skip
USER_COLUMNS = (User.id, User.email, User.is_superuser)
TENANT_COLUMNS = (Tenant.id, Tenant.slug, Tenant.name, Tenant.status)
# Where the user's and a tenant's columns are in a row of CALLER_OF_TOKEN.
_USER_AT = slice(len(TOKEN_COLUMNS), len(TOKEN_COLUMNS) + len(USER_COLUMNS))
_TENANT_AT = slice(_USER_AT.stop, _USER_AT.stop + len(TENANT_COLUMNS))

# Built once, as every request runs them: a token's user with each membership, and a token's use.
CALLER_OF_TOKEN = (
    select(*TOKEN_COLUMNS, *USER_COLUMNS, *TENANT_COLUMNS, Membership.role)
    .join(User, ApiToken.user_id == User.id)
    .outerjoin(Membership, Membership.user_id == User.id)
    .outerjoin(Tenant, Tenant.id == Membership.tenant_id)
    .where(ApiToken.token_hash == bindparam("token_hash"))
)
# The token's row is skipped, not waited for, while another request's transaction holds it: that
# request is writing the same use (PostgreSQL; SQLite writes one transaction at a time anyway).
TOKEN_USED = (
    update(ApiToken.__table__)
    .where(
        ApiToken.__table__.c.id
        == select(ApiToken.id).where(ApiToken.id == bindparam("token_id")).with_for_update(skip_locked=True).scalar_subquery()
    )
    .values(last_used_at=bindparam("used_at"))
)


@dataclass(frozen=True)
class CallingUser:
    """The user behind a request's token, as far as a request needs to know."""

    id: uuid.UUID
    email: str
    is_superuser: bool


@dataclass(frozen=True)
class ActingTenant:
    """The tenant a request acts for, as far as a request needs to know."""

    id: uuid.UUID
    slug: str
    name: str
    status: TenantStatus


@dataclass(frozen=True)
class TokenHolder:
    """A usable token's user, what the token itself grants, the tenant it is bound to (None: any
    of its user's), and its id when its use is to be recorded (None: recorded recently)."""

    user: CallingUser
    granted: frozenset[Scope]
    bound_tenant_id: uuid.UUID | None
    token_to_mark: uuid.UUID | None
    memberships: tuple[tuple[ActingTenant, Role], ...]

    @property
    def is_operator(self) -> bool:
        """Whether the token carries a platform operator's powers: a superuser's, bound to no tenant,
        with the platform scope. A token bound to a tenant (as a tenant's owner makes them) acts
        there in its user's role alone, whoever the user is: an owner who made one for an operator
        they added as a member holds no operator's powers through it."""
        return self.user.is_superuser and self.bound_tenant_id is None and Scope.PLATFORM in self.granted

    def scopes_as(self, role: Role | None) -> frozenset[Scope]:
        """The token's effective scopes when its user acts in a role (None: as an operator)."""
        return self.granted & allowed_scopes(self.is_operator, (role,))

    def require(self, needed: Scope) -> None:
        """Raises Forbidden naming ``needed`` when the token, acting for no tenant, lacks it."""
        require_scope(self.scopes_as(None), needed)


@dataclass(frozen=True)
class Caller:
    """An authenticated user acting in one tenant; ``role`` is None for an operator with no membership.
    ``scopes`` are the token's effective scopes in that role."""

    user: CallingUser
    tenant: ActingTenant
    role: Role | None
    scopes: frozenset[Scope] = frozenset(Scope)
    # The token whose use the caller should record; None when it was recorded recently.
    token_to_mark: uuid.UUID | None = None
    # Acting with a platform operator's powers (``TokenHolder.is_operator``), not merely as a superuser.
    is_operator: bool = False

    @property
    def can_write(self) -> bool:
        return self.is_operator or self.role in WRITER_ROLES


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate(session: Session, plain_token: str | None, tenant_ref: str | None) -> Caller:
    """Resolve a bearer token and the requested tenant into a Caller, in one query.

    The tenant is the user's only one, or the one named (by id or slug) in ``tenant_ref``; a token
    bound to a tenant sees only that one. Reads only. When the token's ``last_used_at`` is older
    than ``LAST_USED_RESOLUTION``, ``token_to_mark`` asks the caller to ``record_token_use`` in a
    transaction it commits.

    Raises:
        AuthenticationFailed: no token, or one that is unknown, expired or revoked, or its user disabled.
        InvalidRequest: the user has several tenants and named none, or none at all, or the
            header is not a plausible tenant reference.
        Forbidden: the named tenant is not one of the user's.
    """
    holder = token_holder(session, plain_token)
    if tenant_ref:
        if not (SLUG.is_valid(tenant_ref) or UUID.is_valid(tenant_ref)):
            raise InvalidRequest("X-Tenant-ID must be a tenant slug or id")
        if (chosen := _named_tenant(session, holder, tenant_ref)) is None:
            raise Forbidden(f"X-Tenant-ID {tenant_ref.lower()!r} is not a tenant you belong to")
        tenant, role = chosen
    elif len(holder.memberships) == 1:
        tenant, role = holder.memberships[0]
    elif not holder.memberships:
        raise InvalidRequest("you belong to no tenant; name one with the X-Tenant-ID header")
    else:
        slugs = ", ".join(sorted(tenant.slug for tenant, _ in holder.memberships))
        raise InvalidRequest(f"you belong to several tenants ({slugs}); choose one with the X-Tenant-ID header")
    return Caller(holder.user, tenant, role, holder.scopes_as(role), holder.token_to_mark, holder.is_operator)


def authenticate_for_tenant(session: Session, plain_token: str | None, tenant_ref: str) -> Caller:
    """As ``authenticate``, for a tenant named in the request's path: a tenant the token may not
    act for is answered as one that does not exist (NotFound), as another tenant's job is."""
    holder = token_holder(session, plain_token)
    chosen = _named_tenant(session, holder, tenant_ref) if SLUG.is_valid(tenant_ref) or UUID.is_valid(tenant_ref) else None
    if chosen is None:
        raise NotFound(f"no tenant {quoted(tenant_ref)}")
    tenant, role = chosen
    return Caller(holder.user, tenant, role, holder.scopes_as(role), holder.token_to_mark, holder.is_operator)


def require_operator(holder: TokenHolder) -> None:
    """Pass a platform operator (a superuser whose token has the ``platform`` scope and is bound to
    no tenant), acting for no tenant.

    Raises:
        Forbidden: the user is not a platform operator, or the token lacks the platform scope.
    """
    if not holder.user.is_superuser:
        raise Forbidden("only platform operators may do this")
    holder.require(Scope.PLATFORM)


def token_holder(session: Session, plain_token: str | None) -> TokenHolder:
    """The usable token's holder, with the memberships it may act in (all its user's, or the one
    of the tenant it is bound to)."""
    if not plain_token:
        raise MissingCredentials("missing bearer token")
    rows = session.connection().execute(CALLER_OF_TOKEN, {"token_hash": hash_token(plain_token)}).all()
    if not rows:
        raise AuthenticationFailed("unknown token")
    token_id, revoked_at, expires_at, last_used_at, scopes, bound_tenant_id, disabled_at = rows[0][: len(TOKEN_COLUMNS)]
    now = utcnow()
    if disabled_at is not None:
        raise AuthenticationFailed("user disabled")
    if (refusal := token_refusal(revoked_at, expires_at, now)) is not None:
        raise AuthenticationFailed(refusal)
    memberships = tuple(
        (ActingTenant(*row[_TENANT_AT]), row.role)
        for row in rows
        if row[_TENANT_AT.start] is not None and bound_tenant_id in (None, row[_TENANT_AT.start])
    )
    stale = last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION
    user = CallingUser(*rows[0][_USER_AT])
    return TokenHolder(user, granted_scopes(scopes), bound_tenant_id, token_id if stale else None, memberships)


def record_token_use(session: Session, token_id: uuid.UUID) -> None:
    """Record the token's use now, in the session's transaction (the caller commits): one UPDATE,
    which holds the token's row until that commit, and skips it while another transaction does."""
    session.connection().execute(TOKEN_USED, {"token_id": token_id, "used_at": utcnow()})


def token_refusal(revoked_at: datetime | None, expires_at: datetime | None, now: datetime) -> str | None:
    """Why a token may not be used any more, or None while it may."""
    if revoked_at is not None:
        return "token revoked"
    if expires_at is not None and expires_at <= now:
        return "token expired"
    return None


def _named_tenant(session: Session, holder: TokenHolder, tenant_ref: str) -> tuple[ActingTenant, Role | None] | None:
    """The tenant ``tenant_ref`` (a valid slug or id) names, if the token may act for it: one of
    its memberships, or, for an operator's unbound token with the platform scope, any tenant."""
    tenant_ref = tenant_ref.lower()  # a UUID as str(tenant.id) writes it; a slug is lowercase already
    for tenant, role in holder.memberships:
        if tenant_ref in (str(tenant.id), tenant.slug):
            return tenant, role
    if holder.is_operator:
        named = or_(Tenant.slug == tenant_ref, Tenant.id == (uuid.UUID(tenant_ref) if UUID.is_valid(tenant_ref) else None))
        if (found := session.execute(select(*TENANT_COLUMNS).where(named)).first()) is not None:
            return ActingTenant(*found), None
    return None
