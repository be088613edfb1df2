"""Bearer-token authentication and the tenant of each request."""

import functools

from flask import g, request

from api.errors import error_for
from api.limits import count_token_request
from api.session import db_session, require_current_schema, write_token_use
from provisioning.accounts import scopes
from provisioning.accounts.audit import Origin
from provisioning.accounts.registry import Caller, authenticate, authenticate_for_tenant, require_operator, token_holder
from provisioning.enums import Role, Scope
from provisioning.errors import Forbidden, ProvisioningError
from provisioning.platform.identifiers import SLUG, UUID

TENANT_HEADER = "X-Tenant-ID"
# Methods that change nothing: what the ``read`` scope allows.
READING_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Documented on every path that acts for a tenant (see create_app).
TENANT_HEADER_DOC = {
    "description": "The tenant to act for, by slug or id, when the caller belongs to several (a platform "
    "operator may name any); absent or empty, the caller's only tenant.",
    "required": False,
    "schema": {"type": "string", "pattern": f"^$|{SLUG.pattern.pattern}|{UUID.pattern.pattern}"},
}


def authenticate_request() -> None:
    """Runs before every protected view: sets ``g.caller`` or answers 401/400/403 (503 while the
    schema is not migrated). Reading needs the token's ``read`` scope; writing views check theirs
    (``writers_only``)."""
    require_current_schema()
    try:
        g.caller = authenticate(db_session(), _bearer_token(), request.headers.get(TENANT_HEADER))
    except ProvisioningError as error:
        raise error_for(error) from None
    _authenticated(g.caller.user, g.caller.token_to_mark)
    if request.method in READING_METHODS:
        _require(g.caller.scopes, Scope.READ)


def authenticate_operator_request() -> None:
    """Runs before every view of the platform's own resources (servers, tenants, users): only
    platform operators whose token has the ``platform`` scope pass, acting for no tenant; sets
    ``g.operator`` or answers 401/403 (503 while the schema is not migrated)."""
    require_current_schema()
    try:
        holder = token_holder(db_session(), _bearer_token())
    except ProvisioningError as error:
        raise error_for(error) from None
    _authenticated(holder.user, holder.token_to_mark)  # a refusal's audit entry names who was refused
    try:
        require_operator(holder)
    except Forbidden as error:
        raise error_for(error) from None
    g.operator = holder.user


def caller() -> Caller:
    return g.caller


def request_origin() -> Origin:
    """The caller and where the request came from, as the audit trail records them (an address
    always fits its column: ``TrustedProxies`` leaves only valid ones in ``remote_addr``)."""
    user = g.user
    return Origin(actor=f"user {user.id}", ip=request.remote_addr, user_agent=request.user_agent.string)


def writers_only(view):
    """Let only owners, admins and operators change a tenant's jobs and webhooks, with a token that
    has the ``write`` scope, before the request body is even read.

    Put it above flask-smorest's decorators, so a member learns 403 rather than what was
    wrong with a body they may not send at all.
    """

    @functools.wraps(view)
    def checked(*args, **kwargs):
        if not g.caller.can_write:
            raise error_for(Forbidden("changing jobs and webhooks needs the owner or admin role"))
        require_scope(Scope.WRITE)
        return view(*args, **kwargs)

    return checked


def require_scope(needed: Scope) -> None:
    """Answer 403, naming the scope, unless the caller's token has it (after the caller's role is
    checked: one who may not do this at all is told so first)."""
    _require(g.caller.scopes, needed)


def authenticate_token_holder_request() -> None:
    """Runs before every view of the caller's own tokens: any usable token with the ``read`` scope,
    acting for no tenant; sets ``g.holder`` (a ``TokenHolder``) or answers 401/403."""
    require_current_schema()
    try:
        g.holder = token_holder(db_session(), _bearer_token())
    except ProvisioningError as error:
        raise error_for(error) from None
    _authenticated(g.holder.user, g.holder.token_to_mark)
    _require(g.holder.scopes_as(None), Scope.READ)


def authenticate_tenant_manager_request() -> None:
    """Runs before every view of a tenant's members and tokens, the tenant named in the path
    (``tenant``): its owner (``read`` to look, ``write`` to change) or a platform operator
    (``platform``) pass; sets ``g.caller``. A tenant the token may not act for is a 404, as
    another tenant's job is; an admin or member of it gets 403."""
    require_current_schema()
    try:
        g.caller = authenticate_for_tenant(db_session(), _bearer_token(), request.view_args["tenant"])
    except ProvisioningError as error:
        raise error_for(error) from None
    _authenticated(g.caller.user, g.caller.token_to_mark)
    if g.caller.is_operator:
        return
    if g.caller.role != Role.OWNER:
        raise error_for(Forbidden("managing a tenant's members and tokens needs its owner role"))
    _require(g.caller.scopes, Scope.READ if request.method in READING_METHODS else Scope.WRITE)


def _authenticated(user, token_to_mark) -> None:
    """Note who calls (``g.user``, for the audit trail), count the request against its token's rate
    limit, and write the token's use when it is due."""
    g.user = user
    count_token_request(_bearer_token())
    if token_to_mark is not None:
        write_token_use(token_to_mark)


def _require(granted, needed: Scope) -> None:
    try:
        scopes.require_scope(granted, needed)
    except Forbidden as error:
        raise error_for(error) from None


def _bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
