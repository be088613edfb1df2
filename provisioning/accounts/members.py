"""A tenant's members: added (by e-mail, the user made if there is none), their role changed,
removed; a tenant never left without an owner. Each function is one transaction, committed,
with its audit entries."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioning.accounts import audit
from provisioning.accounts.audit import SYSTEM, Origin
from provisioning.accounts.checks import flush_unique
from provisioning.accounts.tokens import revoke_tenant_tokens
from provisioning.accounts.users import new_user
from provisioning.enums import Role
from provisioning.errors import Conflict, NotFound
from provisioning.models import Membership, Tenant, User
from provisioning.platform.db import page_of


def add_membership(session: Session, user: User, tenant: Tenant, role: Role, origin: Origin = SYSTEM) -> Membership:
    """Raises Conflict when the user is a member of the tenant already."""
    membership = _new_membership(session, user, tenant, role, origin)
    session.commit()
    return membership


def add_member(
    session: Session, tenant: Tenant, email: str, role: Role, origin: Origin = SYSTEM, *, by_operator: bool
) -> tuple[Membership, User]:
    """Give the user with ``email`` a role in the tenant, making the user first if there is none
    (both in one transaction: a refused membership leaves no user behind).

    A tenant's owner (``by_operator`` false) may add new users only. A user who exists already
    belongs to others: drawn into this tenant, their tokens bound to no tenant would have to name
    one on every request from then on, and they could be a platform operator or disabled, which
    the owner must not learn by trying addresses. A platform operator (an operator's request, the
    CLI) may add anyone but a disabled user.

    Raises InvalidRequest for an address that is not one, and Conflict for a member already, a
    user who exists (for an owner), or a disabled user.
    """
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        user = new_user(session, email, origin=origin, tenant_id=tenant.id)
    elif not by_operator and not _is_member(session, user, tenant):
        raise Conflict(f"{user.email} has an account already; ask the platform to add an existing user to a tenant")
    elif user.disabled_at is not None:
        raise Conflict(f"{user.email} is disabled and can be made no member")
    membership = _new_membership(session, user, tenant, role, origin)
    session.commit()
    return membership, user


def _is_member(session: Session, user: User, tenant: Tenant) -> bool:
    membership = select(Membership.id).where(Membership.user_id == user.id, Membership.tenant_id == tenant.id)
    return session.scalar(membership) is not None


def change_role(session: Session, tenant: Tenant, user_id: uuid.UUID, role: Role, origin: Origin = SYSTEM) -> Membership:
    """Raises NotFound for a user who is no member, Conflict for demoting the tenant's last owner."""
    membership, email = membership_of(session, tenant, user_id)
    if membership.role == role:
        return membership
    if membership.role == Role.OWNER:
        _keep_an_owner(session, tenant, "demote")
    audit.record(session, origin, "membership.changed", tenant.id, email, f"{membership.role.value} -> {role.value}")
    membership.role = role
    session.commit()
    return membership


def remove_membership(session: Session, tenant: Tenant, user_id: uuid.UUID, origin: Origin = SYSTEM) -> None:
    """Remove the user from the tenant, revoking their tokens bound to it.

    Raises NotFound for a user who is no member, Conflict for the tenant's last owner.
    """
    membership, email = membership_of(session, tenant, user_id)
    if membership.role == Role.OWNER:
        _keep_an_owner(session, tenant, "remove")
    revoked = revoke_tenant_tokens(session, user_id, tenant.id)
    session.delete(membership)
    audit.record(session, origin, "membership.removed", tenant.id, email, f"{membership.role.value}; {revoked} token(s) revoked")
    session.commit()


def list_members(
    session: Session, tenant_id: uuid.UUID, page: int = 1, size: int = 20
) -> tuple[list[tuple[Membership, str]], int]:
    """A page of the tenant's members (each membership with its user's e-mail), by e-mail."""
    query = (
        select(Membership, User.email).join(User, User.id == Membership.user_id).where(Membership.tenant_id == tenant_id)
    ).order_by(User.email)
    rows, total = page_of(session, query, page, size)
    return [(membership, email) for membership, email in rows], total


def _new_membership(session: Session, user: User, tenant: Tenant, role: Role, origin: Origin) -> Membership:
    membership = Membership(user_id=user.id, tenant_id=tenant.id, role=role)
    session.add(membership)
    flush_unique(session, f"{user.email} is already a member of {tenant.slug}")
    audit.record(session, origin, "membership.added", tenant.id, user.email, role.value)
    return membership


def membership_of(session: Session, tenant: Tenant, user_id: uuid.UUID) -> tuple[Membership, str]:
    """The user's membership in the tenant, with their e-mail; NotFound when they are no member."""
    found = session.execute(
        select(Membership, User.email)
        .join(User, User.id == Membership.user_id)
        .where(Membership.tenant_id == tenant.id, Membership.user_id == user_id)
    ).first()
    if found is None:
        raise NotFound(f"user {user_id} is not a member of {tenant.slug}")
    return found[0], found[1]


def _keep_an_owner(session: Session, tenant: Tenant, what: str) -> None:
    """Conflict unless the tenant has another owner. The owners' rows are locked until the
    transaction ends: two owners demoting each other at once cannot both win (the second waits,
    then sees one owner left)."""
    owners = session.scalars(
        select(Membership.id)
        .where(Membership.tenant_id == tenant.id, Membership.role == Role.OWNER)
        .order_by(Membership.id)  # every transaction locks them in one order: no deadlock between two
        .with_for_update()
    ).all()
    if len(owners) <= 1:
        raise Conflict(f"cannot {what} the last owner of {tenant.slug}; make another member owner first")
