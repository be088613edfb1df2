"""The accounts' front door: tenants, users, memberships and API tokens, who may call the API
and for which tenant. Callers (the API, the CLI, the tests) import from here; each part lives in
a module of its own (``tenants``, ``users``, ``members``, ``tokens``, ``authentication``)."""

from provisioning.accounts.authentication import (
    TOKEN_PREFIX,
    Caller,
    authenticate,
    authenticate_for_tenant,
    hash_token,
    record_token_use,
    require_operator,
    token_holder,
    token_refusal,
)
from provisioning.accounts.members import add_member, add_membership, change_role, list_members, membership_of, remove_membership
from provisioning.accounts.tenants import (
    MAX_TENANT_NAME_LENGTH,
    RESERVED_SLUGS,
    create_tenant,
    find_tenant,
    list_tenants,
    rename_tenant,
    tenant_by_ref,
)
from provisioning.accounts.tokens import (
    MAX_TOKEN_LIFETIME,
    MAX_TOKEN_NAME_LENGTH,
    issue_token,
    list_tokens,
    revoke_all_tokens,
    revoke_token,
)
from provisioning.accounts.users import MAX_EMAIL_LENGTH, create_user, disable_user, find_user, list_users, user_by_id

__all__ = [
    "TOKEN_PREFIX", "Caller", "authenticate",
    "authenticate_for_tenant", "hash_token", "record_token_use", "require_operator", "token_holder", "token_refusal",
    "add_member", "add_membership", "change_role", "list_members", "membership_of", "remove_membership",
    "MAX_TENANT_NAME_LENGTH", "RESERVED_SLUGS", "create_tenant", "find_tenant", "list_tenants", "rename_tenant", "tenant_by_ref",
    "MAX_TOKEN_LIFETIME", "MAX_TOKEN_NAME_LENGTH", "issue_token", "list_tokens", "revoke_all_tokens", "revoke_token",
    "MAX_EMAIL_LENGTH", "create_user", "disable_user", "find_user", "list_users", "user_by_id",
]  # fmt: skip
