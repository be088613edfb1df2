"""Users: made, found, listed, and disabled (every token revoked in the same transaction). The
public functions are each one transaction, committed, with their audit entries."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioning.accounts import audit
from provisioning.accounts.audit import SYSTEM, Origin
from provisioning.accounts.checks import flush_unique
from provisioning.accounts.tokens import revoke_every_token
from provisioning.errors import InvalidRequest, NotFound
from provisioning.models import User
from provisioning.platform.db import page_of, utcnow
from provisioning.platform.identifiers import EMAIL
from provisioning.platform.quoting import quoted

MAX_EMAIL_LENGTH = 254  # users.email, the longest address SMTP allows


def create_user(session: Session, email: str, is_superuser: bool = False, origin: Origin = SYSTEM) -> User:
    """Raises InvalidRequest for an address that is not one, Conflict for a taken one."""
    user = new_user(session, email, is_superuser, origin)
    session.commit()
    return user


def new_user(
    session: Session, email: str, is_superuser: bool = False, origin: Origin = SYSTEM, tenant_id: uuid.UUID | None = None
) -> User:
    """As ``create_user``, in the caller's transaction (adding a member by e-mail makes the user
    with it, and the entry goes in that tenant's trail, ``tenant_id``)."""
    email = email.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidRequest(f"e-mail is {len(email)} characters long; at most {MAX_EMAIL_LENGTH} are allowed")
    if not EMAIL.is_valid(email):
        raise InvalidRequest(f"{quoted(email)} is not an e-mail address")
    user = User(email=email, is_superuser=is_superuser)
    session.add(user)
    flush_unique(session, f"a user with e-mail {email!r} already exists")
    audit.record(session, origin, "user.created", tenant_id, email, "platform operator" if is_superuser else "")
    return user


def find_user(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no user with e-mail {quoted(email)}")
    return user


def user_by_id(session: Session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    return user


def list_users(session: Session, page: int = 1, size: int = 20) -> tuple[list[User], int]:
    """A page of users, by e-mail."""
    rows, total = page_of(session, select(User).order_by(User.email), page, size)
    return [row[0] for row in rows], total


def disable_user(session: Session, user: User, origin: Origin = SYSTEM) -> int:
    """Disable the user and revoke every token of theirs, at once (one transaction): no request
    of theirs passes from the commit on, and they can be given no new token. How many tokens
    were revoked; disabling a disabled user keeps the first time and revokes what is left."""
    if user.disabled_at is None:
        user.disabled_at = utcnow()
        audit.record(session, origin, "user.disabled", target=user.email)
    revoked = revoke_every_token(session, user, origin)
    session.commit()
    return revoked
