"""What a token may do: its own scopes, within what its user's role allows.

A role allows: member -> read; owner, admin -> read, write; a superuser -> read, write,
platform. A token's effective scopes are its scopes (all of them for a token made before scopes,
whose ``scopes`` is NULL) that its user's role allows, so a token never outgrows a demotion.
"""

from __future__ import annotations

from collections.abc import Iterable

from provisioning.enums import Role, Scope
from provisioning.errors import Forbidden

ALL_SCOPES = frozenset(Scope)
ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    Role.MEMBER: frozenset({Scope.READ}),
    Role.ADMIN: frozenset({Scope.READ, Scope.WRITE}),
    Role.OWNER: frozenset({Scope.READ, Scope.WRITE}),
}
# What a user with no role at all may hold (one whose memberships are all gone): what a member may.
LEAST_SCOPES = ROLE_SCOPES[Role.MEMBER]
# By stored value, for the request path: a dict lookup, not an enum's constructor.
_SCOPE_OF_VALUE = {scope.value: scope for scope in Scope}


def allowed_scopes(is_superuser: bool, roles: Iterable[Role | None]) -> frozenset[Scope]:
    """What a user may give a token: everything for a superuser, else what its best role allows."""
    if is_superuser:
        return ALL_SCOPES
    return LEAST_SCOPES.union(*(ROLE_SCOPES[role] for role in roles if role is not None))


def granted_scopes(stored: list[str] | None) -> frozenset[Scope]:
    """A token's own scopes, as stored: NULL (a token made before scopes) grants them all."""
    if stored is None:
        return ALL_SCOPES
    return frozenset(_SCOPE_OF_VALUE[value] for value in stored if value in _SCOPE_OF_VALUE)


def stored_scopes(scopes: Iterable[Scope]) -> list[str]:
    """Scopes as a token's row keeps them: their values, in the enum's order (read, write, platform)."""
    chosen = set(scopes)
    return [scope.value for scope in Scope if scope in chosen]


def require_scope(scopes: frozenset[Scope], needed: Scope) -> None:
    """Raises Forbidden, naming the scope, when ``needed`` is not among ``scopes``."""
    if needed not in scopes:
        raise Forbidden(f"this token lacks the scope {needed.value!r}")
