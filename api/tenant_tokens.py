"""``/api/v1/tenants/{tenant}/tokens``: tokens that act for one tenant alone, issued for its members
(within their role) and revoked by its owner or a platform operator."""

import uuid

from flask.views import MethodView

from api.account_schemas import (
    NewTokenResponseSchema,
    TenantTokenCreateSchema,
    TokenListResponseSchema,
    TokenResponseSchema,
    refusals,
    tenant_in_path,
)
from api.auth import authenticate_tenant_manager_request, caller, request_origin
from api.members import NOT_MANAGER, managed_tenant
from api.parsing import Blueprint
from api.schemas import PageArgsSchema
from api.session import db_session
from api.tokens import issue, listed, shown
from provisioning.accounts import registry as accounts

blp = Blueprint(
    "tenant_tokens",
    __name__,
    url_prefix="/api/v1/tenants/<tenant>/tokens",
    description="Tokens bound to one tenant: they act for it alone. The tenant's owner (read to list, write to "
    "issue and revoke) or a platform operator; another tenant is a 404.",
)
blp.before_request(authenticate_tenant_manager_request)


@blp.route("", parameters=tenant_in_path())
class TenantTokens(MethodView):
    @blp.arguments(PageArgsSchema(), location="query")
    @blp.response(200, TokenListResponseSchema)
    @refusals(blp, NOT_MANAGER)
    def get(self, args, tenant: str):
        """List the tokens bound to the tenant, newest first (never the tokens themselves)"""
        return listed(*accounts.list_tokens(db_session(), tenant_id=caller().tenant.id, **args), args)

    @blp.arguments(TenantTokenCreateSchema())
    @blp.response(201, NewTokenResponseSchema)
    @refusals(blp, {**NOT_MANAGER, 404: "No such tenant, or `user_id` is not a member of it", 409: "The user is disabled"})
    def post(self, body, tenant: str):
        """Issue a token for a member, acting for this tenant alone; shown in this answer only

        Its scopes must be within the member's role here (a member: read; an owner or admin:
        read, write; never platform); by default it gets all the role allows. Its lifetime is at
        most TOKEN_MAX_LIFETIME_DAYS, the default.
        """
        session, managed = db_session(), managed_tenant()
        # Whether the user exists elsewhere is none of this tenant's business: not a member is a 404 either way.
        accounts.membership_of(session, managed, body["user_id"])
        return issue(accounts.user_by_id(session, body["user_id"]), body, managed)


@blp.route("/<uuid:token_id>", parameters=tenant_in_path())
class TenantTokenById(MethodView):
    @blp.response(200, TokenResponseSchema)
    @refusals(blp, {**NOT_MANAGER, 404: "No such tenant, or no such token bound to it"})
    def delete(self, tenant: str, token_id: uuid.UUID):
        """Revoke a token bound to the tenant; the answer is the token, revoked"""
        token = accounts.revoke_token(db_session(), token_id, request_origin(), tenant_id=caller().tenant.id)
        return {"data": shown(token)}
