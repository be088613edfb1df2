"""Bearer-token authentication and the tenant of each request."""

import functools

from flask import g, request

from api.errors import error_for
from api.limits import count_token_request
from api.session import db_session, require_current_schema, write_token_use
from provisioning.accounts.audit import Origin
from provisioning.accounts.registry import Caller, authenticate, authenticate_operator
from provisioning.errors import Forbidden, ProvisioningError
from provisioning.platform.identifiers import SLUG, UUID

TENANT_HEADER = "X-Tenant-ID"
# Documented on every path that acts for a tenant (see create_app).
TENANT_HEADER_DOC = {
    "description": "The tenant to act for, by slug or id, when the caller belongs to several (a platform "
    "operator may name any); absent or empty, the caller's only tenant.",
    "required": False,
    "schema": {"type": "string", "pattern": f"^$|{SLUG.pattern.pattern}|{UUID.pattern.pattern}"},
}


def authenticate_request() -> None:
    """Runs before every protected view: sets ``g.caller`` or answers 401/400/403 (503 while the
    schema is not migrated)."""
    require_current_schema()
    try:
        g.caller = authenticate(db_session(), _bearer_token(), request.headers.get(TENANT_HEADER))
    except ProvisioningError as error:
        raise error_for(error) from None
    count_token_request(_bearer_token())
    if g.caller.token_to_mark is not None:
        write_token_use(g.caller.token_to_mark)


def authenticate_operator_request() -> None:
    """Runs before every view of the platform's own resources (servers): only platform operators
    pass, acting for no tenant; sets ``g.operator`` or answers 401/403 (503 while the schema is
    not migrated)."""
    require_current_schema()
    try:
        g.operator, token_to_mark = authenticate_operator(db_session(), _bearer_token())
    except ProvisioningError as error:
        raise error_for(error) from None
    count_token_request(_bearer_token())
    if token_to_mark is not None:
        write_token_use(token_to_mark)


def caller() -> Caller:
    return g.caller


def request_origin() -> Origin:
    """The caller and where the request came from, as the audit trail records them (an address
    always fits its column: ``TrustedProxies`` leaves only valid ones in ``remote_addr``)."""
    user = g.caller.user if "caller" in g else g.operator
    return Origin(actor=f"user {user.id}", ip=request.remote_addr, user_agent=request.user_agent.string)


def writers_only(view):
    """Let only owners, admins and operators through, before the request body is even read.

    Put it above flask-smorest's decorators, so a member learns 403 rather than what was
    wrong with a body they may not send at all.
    """

    @functools.wraps(view)
    def checked(*args, **kwargs):
        if not g.caller.can_write:
            raise error_for(Forbidden("creating, retrying and cancelling jobs needs the owner or admin role"))
        return view(*args, **kwargs)

    return checked


def _bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
