"""Tenants, users, memberships and API tokens: who may call the API, and for which tenant."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provisioning.accounts import audit
from provisioning.accounts.audit import SYSTEM, Origin
from provisioning.enums import WRITER_ROLES, Role, TenantStatus
from provisioning.errors import (
    AuthenticationFailed,
    Conflict,
    Forbidden,
    InvalidRequest,
    MissingCredentials,
    NotFound,
)
from provisioning.models import ApiToken, Membership, Tenant, User
from provisioning.platform.db import utcnow
from provisioning.platform.identifiers import EMAIL, SLUG, UUID
from provisioning.platform.quoting import quoted

TOKEN_PREFIX = "erpx_"
# A token's last use is written at most this often, so reads do not each cost a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# The columns' lengths, checked before the database sees a value: a longer one is the caller's
# mistake, to be told in a sentence, not a database error.
MAX_TENANT_NAME_LENGTH = 200  # tenants.name
MAX_EMAIL_LENGTH = 254  # users.email, the longest address SMTP allows
MAX_TOKEN_NAME_LENGTH = 100  # api_tokens.name
# A token lives at most this long: an expiry must stay a date the database and Python can hold.
MAX_TOKEN_LIFETIME = timedelta(days=3650)


# What a request needs to know of its token's user and of a tenant: columns, not model objects,
# which cost a request more to make than the query that reads them.
TOKEN_COLUMNS = (ApiToken.id, ApiToken.revoked_at, ApiToken.expires_at, ApiToken.last_used_at)
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
class Caller:
    """An authenticated user acting in one tenant; ``role`` is None for an operator with no membership."""

    user: CallingUser
    tenant: ActingTenant
    role: Role | None
    # The token whose use the caller should record; None when it was recorded recently.
    token_to_mark: uuid.UUID | None = None

    @property
    def can_write(self) -> bool:
        return self.user.is_superuser or self.role in WRITER_ROLES


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_tenant(session: Session, slug: str, name: str, origin: Origin = SYSTEM) -> Tenant:
    """Raises InvalidRequest for a slug that cannot be a site name, Conflict for a taken one."""
    if problem := SLUG.problem("slug", slug):
        raise InvalidRequest(problem)
    name = _text("name", name, MAX_TENANT_NAME_LENGTH)
    if not name:
        raise InvalidRequest("name must not be empty")
    tenant = Tenant(slug=slug, name=name)
    session.add(tenant)
    _flush_unique(session, f"a tenant with slug {slug!r} already exists")
    audit.record(session, origin, "tenant.created", tenant.id, slug, tenant.name)
    session.commit()
    return tenant


def create_user(session: Session, email: str, is_superuser: bool = False, origin: Origin = SYSTEM) -> User:
    email = email.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidRequest(f"e-mail is {len(email)} characters long; at most {MAX_EMAIL_LENGTH} are allowed")
    if not EMAIL.is_valid(email):
        raise InvalidRequest(f"{quoted(email)} is not an e-mail address")
    user = User(email=email, is_superuser=is_superuser)
    session.add(user)
    _flush_unique(session, f"a user with e-mail {email!r} already exists")
    audit.record(session, origin, "user.created", target=email, detail="platform operator" if is_superuser else "")
    session.commit()
    return user


def add_membership(session: Session, user: User, tenant: Tenant, role: Role, origin: Origin = SYSTEM) -> Membership:
    membership = Membership(user_id=user.id, tenant_id=tenant.id, role=role)
    session.add(membership)
    _flush_unique(session, f"{user.email} is already a member of {tenant.slug}")
    audit.record(session, origin, "membership.added", tenant.id, user.email, role.value)
    session.commit()
    return membership


def find_tenant(session: Session, slug: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"no tenant with slug {quoted(slug)}")
    return tenant


def find_user(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no user with e-mail {quoted(email)}")
    return user


def issue_token(
    session: Session, user: User, name: str = "", expires_in: timedelta | None = None, origin: Origin = SYSTEM
) -> tuple[ApiToken, str]:
    """Create a token; the returned plain text is the only copy there will ever be (not even the
    audit trail keeps it: only the token's id and prefix).

    Raises InvalidRequest for a name too long or with control characters, or a lifetime of more
    than ``MAX_TOKEN_LIFETIME``.
    """
    name = _text("token name", name, MAX_TOKEN_NAME_LENGTH)
    if expires_in is not None and not timedelta(0) < expires_in <= MAX_TOKEN_LIFETIME:
        raise InvalidRequest(f"a token expires after 1 to {MAX_TOKEN_LIFETIME.days} days")
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=hash_token(plain),
        prefix=plain[: len(TOKEN_PREFIX) + 6],
        expires_at=utcnow() + expires_in if expires_in else None,
    )
    session.add(token)
    session.flush()
    audit.record(session, origin, "token.created", target=f"token {token.id} of {user.email}", detail=f"{token.prefix}... {name}")
    session.commit()
    return token, plain


def revoke_token(session: Session, token_id: uuid.UUID, origin: Origin = SYSTEM) -> ApiToken:
    """Revoke a token by id; revoking it again keeps the first revocation time."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token with id {token_id}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, origin, "token.revoked", target=f"token {token.id}", detail=f"{token.prefix}...")
        session.commit()
    return token


def authenticate(session: Session, plain_token: str | None, tenant_ref: str | None) -> Caller:
    """Resolve a bearer token and the requested tenant into a Caller, in one query.

    The tenant is the user's only one, or the one named (by id or slug) in ``tenant_ref``.
    Reads only. When the token's ``last_used_at`` is older than ``LAST_USED_RESOLUTION``,
    ``token_to_mark`` asks the caller to ``record_token_use`` in a transaction it commits.

    Raises:
        AuthenticationFailed: no token, or one that is unknown, expired or revoked.
        InvalidRequest: the user has several tenants and named none, or none at all, or the
            header is not a plausible tenant reference.
        Forbidden: the named tenant is not one of the user's.
    """
    user, rows, token_to_mark = _user_of_token(session, plain_token)
    memberships = [(ActingTenant(*row[_TENANT_AT]), row.role) for row in rows if row[_TENANT_AT.start] is not None]
    tenant, role = _choose_tenant(session, user, memberships, tenant_ref)
    return Caller(user=user, tenant=tenant, role=role, token_to_mark=token_to_mark)


def authenticate_operator(session: Session, plain_token: str | None) -> tuple[CallingUser, uuid.UUID | None]:
    """Resolve a bearer token into a platform operator (a superuser), acting for no tenant, and
    the token whose use to record (as ``authenticate``'s ``token_to_mark``).

    Raises:
        AuthenticationFailed: no token, or one that is unknown, expired or revoked.
        Forbidden: the user is not a platform operator.
    """
    user, _rows, token_to_mark = _user_of_token(session, plain_token)
    if not user.is_superuser:
        raise Forbidden("only platform operators may do this")
    return user, token_to_mark


def _user_of_token(session: Session, plain_token: str | None) -> tuple[CallingUser, list, uuid.UUID | None]:
    """The token's user, the rows of its memberships, and the token's id if its use is to be recorded."""
    if not plain_token:
        raise MissingCredentials("missing bearer token")
    rows = session.connection().execute(CALLER_OF_TOKEN, {"token_hash": hash_token(plain_token)}).all()
    if not rows:
        raise AuthenticationFailed("unknown token")
    token_id, revoked_at, expires_at, last_used_at = rows[0][: len(TOKEN_COLUMNS)]
    now = utcnow()
    if (refusal := token_refusal(revoked_at, expires_at, now)) is not None:
        raise AuthenticationFailed(refusal)
    stale = last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION
    return CallingUser(*rows[0][_USER_AT]), rows, token_id if stale else None


def record_token_use(session: Session, token_id: uuid.UUID) -> None:
    """Record the token's use now, in the session's transaction (the caller commits): one UPDATE,
    which holds the token's row until that commit, and skips it while another transaction does."""
    session.connection().execute(TOKEN_USED, {"token_id": token_id, "used_at": utcnow()})


def _choose_tenant(
    session: Session, user: CallingUser, memberships: list[tuple[ActingTenant, Role]], tenant_ref: str | None
) -> tuple[ActingTenant, Role | None]:
    if tenant_ref:
        if not (SLUG.is_valid(tenant_ref) or UUID.is_valid(tenant_ref)):
            raise InvalidRequest("X-Tenant-ID must be a tenant slug or id")
        tenant_ref = tenant_ref.lower()  # a UUID as str(tenant.id) writes it; a slug is lowercase already
        for tenant, role in memberships:
            if tenant_ref in (str(tenant.id), tenant.slug):
                return tenant, role
        if user.is_superuser:
            named = or_(Tenant.slug == tenant_ref, Tenant.id == _as_uuid(tenant_ref))
            if (found := session.execute(select(*TENANT_COLUMNS).where(named)).first()) is not None:
                return ActingTenant(*found), None
        raise Forbidden(f"X-Tenant-ID {tenant_ref!r} is not a tenant you belong to")
    if len(memberships) == 1:
        tenant, role = memberships[0]
        return tenant, role
    if not memberships:
        raise InvalidRequest("you belong to no tenant; name one with the X-Tenant-ID header")
    slugs = ", ".join(sorted(tenant.slug for tenant, _ in memberships))
    raise InvalidRequest(f"you belong to several tenants ({slugs}); choose one with the X-Tenant-ID header")


def _text(what: str, value: str, max_length: int) -> str:
    """``value`` stripped; InvalidRequest if it is longer than its column or holds control
    characters (a newline or tab would break every listing that shows it)."""
    value = value.strip()
    if len(value) > max_length:
        raise InvalidRequest(f"{what} is {len(value)} characters long; at most {max_length} are allowed")
    if not value.isprintable():
        raise InvalidRequest(f"{what} {quoted(value)} has control characters (a newline, a tab...)")
    return value


def _as_uuid(value: str) -> uuid.UUID | None:
    return uuid.UUID(value) if UUID.is_valid(value) else None


def _flush_unique(session: Session, message: str) -> None:
    """Write what was added so far (rows others point at go first); a taken name is a Conflict."""
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(message) from None


def token_refusal(revoked_at: datetime | None, expires_at: datetime | None, now: datetime) -> str | None:
    """Why a token may not be used any more, or None while it may."""
    if revoked_at is not None:
        return "token revoked"
    if expires_at is not None and expires_at <= now:
        return "token expired"
    return None
