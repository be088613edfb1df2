"""``/api/v1/tenants`` and ``/api/v1/tenants/{tenant}``: tenants made, listed, read and renamed by
platform operators (a superuser's token with the ``platform`` scope); every change audited.
A tenant's status changes only through its jobs."""

from flask import url_for
from flask.views import MethodView

from api.account_schemas import (
    NOT_OPERATOR,
    PlatformTenantListResponseSchema,
    PlatformTenantResponseSchema,
    TenantCreateSchema,
    TenantQueryArgsSchema,
    TenantUpdateSchema,
    refusals,
    tenant_in_path,
)
from api.auth import authenticate_operator_request, request_origin
from api.parsing import Blueprint
from api.schemas import page_meta
from api.session import db_session
from provisioning.accounts import registry as accounts

blp = Blueprint(
    "platform_tenants",
    __name__,
    url_prefix="/api/v1/tenants",
    description="Every tenant, by slug or id. Platform operators only (a superuser's token with the platform scope).",
)
blp.before_request(authenticate_operator_request)

NO_TENANT = {**NOT_OPERATOR, 404: "No tenant with that slug or id"}


@blp.route("")
class Tenants(MethodView):
    @blp.arguments(TenantQueryArgsSchema(), location="query")
    @blp.response(200, PlatformTenantListResponseSchema)
    @refusals(blp, NOT_OPERATOR)
    def get(self, args):
        """List the tenants by slug

        Filter with `status`; page with `page` (from 1) and `size` (1..100).
        """
        tenants, total = accounts.list_tenants(db_session(), **args)
        return {"data": tenants, "meta": page_meta(args["page"], args["size"], total)}

    @blp.arguments(TenantCreateSchema())
    @blp.response(201, PlatformTenantResponseSchema)
    @refusals(blp, {**NOT_OPERATOR, 409: "A tenant with that slug exists"})
    def post(self, body):
        """Create a tenant: pending, with no site yet

        Give it an owner with `POST /tenants/{tenant}/members`; its site comes with a
        `create_site` job.
        """
        tenant = accounts.create_tenant(db_session(), body["slug"], body["name"], request_origin())
        return {"data": tenant}, 201, {"Location": url_for("platform_tenants.TenantByRef", tenant=tenant.slug)}


@blp.route("/<tenant>", parameters=tenant_in_path())
class TenantByRef(MethodView):
    @blp.response(200, PlatformTenantResponseSchema)
    @refusals(blp, NO_TENANT)
    def get(self, tenant: str):
        """Read one tenant, by slug or id"""
        return {"data": accounts.tenant_by_ref(db_session(), tenant)}

    @blp.arguments(TenantUpdateSchema())
    @blp.response(200, PlatformTenantResponseSchema)
    @refusals(blp, NO_TENANT)
    def patch(self, body, tenant: str):
        """Rename a tenant (its slug, its site's name, stays)"""
        session = db_session()
        return {"data": accounts.rename_tenant(session, accounts.tenant_by_ref(session, tenant), body["name"], request_origin())}
