"""``/api/v1/tenants/{tenant}/members``: a tenant's members added (by e-mail), their role changed,
removed, by its owner or a platform operator; a tenant never left without an owner (409)."""

import uuid

from flask import g, url_for
from flask.views import MethodView

from api.account_schemas import (
    MemberCreateSchema,
    MemberListResponseSchema,
    MemberResponseSchema,
    MemberUpdateSchema,
    refusals,
    tenant_in_path,
)
from api.auth import authenticate_tenant_manager_request, caller, request_origin
from api.parsing import Blueprint
from api.schemas import PageArgsSchema, page_meta
from api.session import db_session
from provisioning.accounts import registry as accounts
from provisioning.models import Membership, Tenant

blp = Blueprint(
    "members",
    __name__,
    url_prefix="/api/v1/tenants/<tenant>/members",
    description="A tenant's members and their roles. The tenant's owner (read to list, write to change) or a "
    "platform operator; another tenant is a 404.",
)
blp.before_request(authenticate_tenant_manager_request)

NOT_MANAGER = {
    403: "The caller is not the tenant's owner or a platform operator, or the token lacks the scope needed",
    404: "No such tenant, or not one the caller may manage",
}
NO_MEMBER = {**NOT_MANAGER, 404: "No such tenant or member"}


def managed_tenant() -> Tenant:
    """The tenant the request's path names, that the caller may manage (authenticated already)."""
    return db_session().get(Tenant, caller().tenant.id)


def shown(membership: Membership, email: str) -> dict:
    return {"user_id": membership.user_id, "email": email, "role": membership.role, "created_at": membership.created_at}


@blp.route("", parameters=tenant_in_path())
class Members(MethodView):
    @blp.arguments(PageArgsSchema(), location="query")
    @blp.response(200, MemberListResponseSchema)
    @refusals(blp, NOT_MANAGER)
    def get(self, args, tenant: str):
        """List the tenant's members by e-mail, with their roles"""
        members, total = accounts.list_members(db_session(), caller().tenant.id, **args)
        return {"data": [shown(*member) for member in members], "meta": page_meta(args["page"], args["size"], total)}

    @blp.arguments(MemberCreateSchema())
    @blp.response(201, MemberResponseSchema)
    @refusals(blp, {**NOT_MANAGER, 409: "The user is a member already, disabled, or a platform operator"})
    def post(self, body, tenant: str):
        """Add a member by e-mail, with a role; a user with no account yet is made one"""
        membership, user = accounts.add_member(
            db_session(), managed_tenant(), body["email"], body["role"], request_origin(), by_operator=g.caller.is_operator
        )
        location = url_for("members.MemberById", tenant=tenant, user_id=user.id)
        return {"data": shown(membership, user.email)}, 201, {"Location": location}


@blp.route("/<uuid:user_id>", parameters=tenant_in_path())
class MemberById(MethodView):
    @blp.arguments(MemberUpdateSchema())
    @blp.response(200, MemberResponseSchema)
    @refusals(blp, {**NO_MEMBER, 409: "The member is the tenant's last owner"})
    def patch(self, body, tenant: str, user_id: uuid.UUID):
        """Change a member's role; the last owner cannot be demoted"""
        session, managed = db_session(), managed_tenant()
        _, email = accounts.membership_of(session, managed, user_id)
        return {"data": shown(accounts.change_role(session, managed, user_id, body["role"], request_origin()), email)}

    @blp.response(200, MemberResponseSchema)
    @refusals(blp, {**NO_MEMBER, 409: "The member is the tenant's last owner"})
    def delete(self, tenant: str, user_id: uuid.UUID):
        """Remove a member, revoking their tokens for this tenant; the answer is the membership as it was

        The last owner cannot be removed.
        """
        session, managed = db_session(), managed_tenant()
        removed = shown(*accounts.membership_of(session, managed, user_id))
        accounts.remove_membership(session, managed, user_id, request_origin())
        return {"data": removed}
