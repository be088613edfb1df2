"""What a token may do: its scopes, within what its user's role allows."""

import pytest

from provisioning.accounts.scopes import allowed_scopes, granted_scopes, require_scope, stored_scopes
from provisioning.enums import Role, Scope
from provisioning.errors import Forbidden

READ, WRITE, PLATFORM = Scope.READ, Scope.WRITE, Scope.PLATFORM


@pytest.mark.parametrize(
    "is_superuser, roles, allowed",
    [
        (False, [Role.MEMBER], {READ}),
        (False, [Role.ADMIN], {READ, WRITE}),
        (False, [Role.OWNER], {READ, WRITE}),
        (False, [Role.MEMBER, Role.OWNER], {READ, WRITE}),
        (False, [], {READ}),
        (False, [None], {READ}),
        (True, [Role.MEMBER], {READ, WRITE, PLATFORM}),
        (True, [None], {READ, WRITE, PLATFORM}),
    ],
)
def test_a_role_allows_read_owners_and_admins_write_and_superusers_the_platform(is_superuser, roles, allowed):
    assert allowed_scopes(is_superuser, roles) == allowed


def test_a_token_made_before_scopes_grants_them_all_and_an_unknown_stored_scope_grants_nothing():
    assert granted_scopes(None) == {READ, WRITE, PLATFORM}
    assert granted_scopes(["read", "retired-scope"]) == {READ}
    assert granted_scopes([]) == set()


def test_scopes_are_stored_in_one_order_whatever_order_they_were_asked_in():
    assert stored_scopes([PLATFORM, READ, READ]) == ["read", "platform"]


def test_a_missing_scope_is_forbidden_in_a_message_that_names_it():
    require_scope(frozenset({READ}), READ)
    with pytest.raises(Forbidden, match="^this token lacks the scope 'write'$"):
        require_scope(frozenset({READ}), WRITE)
