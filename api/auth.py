"""Bearer-token authentication and the tenant of each request."""

from flask import g, request

from api.errors import error_for
from api.session import db_session
from provisioning.accounts import Caller, authenticate
from provisioning.errors import Forbidden, ProvisioningError


def authenticate_request() -> None:
    """Runs before every protected view: sets ``g.caller`` or answers 401/400/403."""
    try:
        g.caller = authenticate(db_session(), _bearer_token(), request.headers.get("X-Tenant-ID"))
    except ProvisioningError as error:
        raise error_for(error) from None


def caller() -> Caller:
    return g.caller


def writer() -> Caller:
    """The caller, if allowed to create, retry or cancel jobs (owner, admin or operator)."""
    if not g.caller.can_write:
        raise error_for(Forbidden("creating, retrying and cancelling jobs needs the owner or admin role"))
    return g.caller


def _bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
