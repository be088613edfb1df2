"""``/api/v1/users``: users made, listed, read and disabled, and their tokens issued and revoked,
by platform operators (a superuser's token with the ``platform`` scope); every change audited."""

import uuid

from flask import url_for
from flask.views import MethodView

from api.account_schemas import (
    NOT_OPERATOR,
    NewTokenResponseSchema,
    RevokedTokensResponseSchema,
    TokenCreateSchema,
    TokenListResponseSchema,
    UserCreateSchema,
    UserListResponseSchema,
    UserResponseSchema,
    refusals,
)
from api.auth import authenticate_operator_request, request_origin
from api.parsing import Blueprint
from api.schemas import PageArgsSchema, page_meta
from api.session import db_session
from api.tokens import issue, listed
from provisioning.accounts import registry as accounts

blp = Blueprint(
    "users",
    __name__,
    url_prefix="/api/v1/users",
    description="Users and their tokens. Platform operators only (a superuser's token with the platform scope).",
)
blp.before_request(authenticate_operator_request)

NO_USER = {**NOT_OPERATOR, 404: "No such user"}


@blp.route("")
class Users(MethodView):
    @blp.arguments(PageArgsSchema(), location="query")
    @blp.response(200, UserListResponseSchema)
    @refusals(blp, NOT_OPERATOR)
    def get(self, args):
        """List the users by e-mail"""
        users, total = accounts.list_users(db_session(), **args)
        return {"data": users, "meta": page_meta(args["page"], args["size"], total)}

    @blp.arguments(UserCreateSchema())
    @blp.response(201, UserResponseSchema)
    @refusals(blp, {**NOT_OPERATOR, 409: "A user with that e-mail exists"})
    def post(self, body):
        """Create a user (`is_superuser`: a platform operator)

        To make someone a member of a tenant, `POST /tenants/{tenant}/members` makes the user too.
        """
        user = accounts.create_user(db_session(), body["email"], body["is_superuser"], request_origin())
        return {"data": user}, 201, {"Location": url_for("users.UserById", user_id=user.id)}


@blp.route("/<uuid:user_id>")
class UserById(MethodView):
    @blp.response(200, UserResponseSchema)
    @refusals(blp, NO_USER)
    def get(self, user_id: uuid.UUID):
        """Read one user"""
        return {"data": accounts.user_by_id(db_session(), user_id)}


@blp.route("/<uuid:user_id>/disable")
class UserDisable(MethodView):
    @blp.response(200, UserResponseSchema)
    @refusals(blp, NO_USER)
    def post(self, user_id: uuid.UUID):
        """Disable a user, revoking every token of theirs at once

        From then on each of their tokens is refused (401 "user disabled"), and they can be given
        no new one. Disabling a disabled user keeps the first time.
        """
        session = db_session()
        user = accounts.user_by_id(session, user_id)
        accounts.disable_user(session, user, request_origin())
        return {"data": user}


@blp.route("/<uuid:user_id>/tokens")
class UserTokens(MethodView):
    @blp.arguments(PageArgsSchema(), location="query")
    @blp.response(200, TokenListResponseSchema)
    @refusals(blp, NO_USER)
    def get(self, args, user_id: uuid.UUID):
        """List a user's tokens, newest first (never the tokens themselves)"""
        session = db_session()
        accounts.user_by_id(session, user_id)
        return listed(*accounts.list_tokens(session, user_id=user_id, **args), args)

    @blp.arguments(TokenCreateSchema())
    @blp.response(201, NewTokenResponseSchema)
    @refusals(blp, {**NO_USER, 409: "The user is disabled"})
    def post(self, body, user_id: uuid.UUID):
        """Issue a token for a user, acting for any of their tenants; shown in this answer only

        Its scopes default to all the user's best role allows (a superuser's: read, write,
        platform), its lifetime to TOKEN_MAX_LIFETIME_DAYS. A token for one tenant alone is made
        with `POST /tenants/{tenant}/tokens`.
        """
        return issue(accounts.user_by_id(db_session(), user_id), body)

    @blp.response(200, RevokedTokensResponseSchema)
    @refusals(blp, NO_USER)
    def delete(self, user_id: uuid.UUID):
        """Revoke every token of a user at once; the answer says how many were usable"""
        session = db_session()
        revoked = accounts.revoke_all_tokens(session, accounts.user_by_id(session, user_id), request_origin())
        return {"data": {"revoked": revoked}}
