"""``/api/v1/tokens``: the caller's own tokens, listed and revoked; and how every token view of
the API issues one (shown once, in the creation's answer alone)."""

import uuid
from datetime import timedelta

from flask import current_app, g
from flask.views import MethodView

from api.account_schemas import (
    TokenListResponseSchema,
    TokenResponseSchema,
    refusals,
)
from api.auth import authenticate_token_holder_request, request_origin
from api.parsing import Blueprint
from api.schemas import PageArgsSchema, page_meta
from api.session import db_session
from provisioning.accounts import registry as accounts
from provisioning.models import ApiToken, Tenant, User

blp = Blueprint(
    "tokens",
    __name__,
    url_prefix="/api/v1/tokens",
    description="The caller's own API tokens: any token with the read scope may list and revoke its user's tokens "
    "(a token bound to a tenant, those bound to the same tenant only).",
)
blp.before_request(authenticate_token_holder_request)
# A new token's answer must not be kept by a cache on the way: it holds the only copy.
NOT_STORED = {"Cache-Control": "no-store"}


def issue(user: User, body: dict, tenant: Tenant | None = None):
    """Issue a token as ``body`` (a ``TokenCreateSchema``'s) asks, committed and audited, and
    answer it: 201, the token in the body this once, uncached."""
    settings = current_app.config["PROVISIONING_SETTINGS"]
    token, plain = accounts.issue_token(
        db_session(),
        user,
        name=body["name"],
        expires_in=timedelta(days=body["expires_in_days"]) if "expires_in_days" in body else None,
        origin=request_origin(),
        scopes=frozenset(body["scopes"]) if "scopes" in body else None,
        tenant=tenant,
        max_lifetime=timedelta(days=settings.token_max_lifetime_days),
    )
    return {"data": {**shown(token), "token": plain}}, 201, NOT_STORED


def shown(token: ApiToken) -> dict:
    """A token as the API shows it: everything but its hash."""
    return {
        "id": token.id, "name": token.name, "prefix": token.prefix, "user_id": token.user_id, "tenant_id": token.tenant_id,
        "scopes": token.scopes, "created_at": token.created_at, "expires_at": token.expires_at,
        "last_used_at": token.last_used_at, "revoked_at": token.revoked_at,
    }  # fmt: skip


def listed(tokens: list[ApiToken], total: int, args: dict) -> dict:
    return {"data": [shown(token) for token in tokens], "meta": page_meta(args["page"], args["size"], total)}


@blp.route("")
class OwnTokens(MethodView):
    @blp.arguments(PageArgsSchema(), location="query")
    @blp.response(200, TokenListResponseSchema)
    @refusals(blp, {403: "The token lacks the scope read"})
    def get(self, args):
        """List the caller's tokens, newest first (never the tokens themselves)

        A token bound to a tenant sees only its user's tokens bound to that tenant.
        """
        return listed(*accounts.list_tokens(db_session(), **_own(), **args), args)


@blp.route("/<uuid:token_id>")
class OwnTokenById(MethodView):
    @blp.response(200, TokenResponseSchema)
    @refusals(blp, {403: "The token lacks the scope read", 404: "The caller has no such token"})
    def delete(self, token_id: uuid.UUID):
        """Revoke one of the caller's tokens (the one in use too); the answer is the token, revoked

        Revoking a revoked token keeps its first revocation time. A token bound to a tenant may
        revoke only its user's tokens bound to that tenant.
        """
        token = accounts.revoke_token(db_session(), token_id, request_origin(), **_own())
        return {"data": shown(token)}


def _own() -> dict:
    """Which tokens are the caller's to see and revoke: its user's; through a token bound to a
    tenant, only those bound to the same tenant. Such a token may be one the tenant's owner made
    for the user (and holds): it must reach nothing of the user's beyond that tenant."""
    return {"user_id": g.holder.user.id, "tenant_id": g.holder.bound_tenant_id}
