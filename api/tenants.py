"""``/api/v1/tenants``: the caller's tenant, and its site's admin password for the owner, once."""

from flask import current_app
from flask.views import MethodView
from flask_smorest.error_handler import ErrorSchema

from api.auth import authenticate_request, caller, request_origin, require_scope
from api.errors import error_for
from api.parsing import Blueprint
from api.schemas import AdminPasswordResponseSchema, TenantResponseSchema
from api.session import db_session
from provisioning.enums import Role, Scope
from provisioning.errors import Forbidden
from provisioning.sites.credentials import SiteCredentials
from provisioning.sites.passwords import reveal_admin_password

blp = Blueprint("tenants", __name__, url_prefix="/api/v1/tenants", description="The tenant the caller acts for.")
blp.before_request(authenticate_request)


@blp.route("/current")
class CurrentTenant(MethodView):
    @blp.response(200, TenantResponseSchema)
    def get(self):
        """The caller's tenant and role in it"""
        current = caller()
        tenant = current.tenant
        return {
            "data": {"id": tenant.id, "slug": tenant.slug, "name": tenant.name, "status": tenant.status, "role": current.role}
        }


@blp.route("/current/admin-password")
class AdminPassword(MethodView):
    @blp.response(200, AdminPasswordResponseSchema)
    @blp.alt_response(403, schema=ErrorSchema, description="Not the tenant's owner, or the token lacks the scope write")
    @blp.alt_response(409, schema=ErrorSchema, description="The site has no admin password yet")
    @blp.alt_response(410, schema=ErrorSchema, description="The password was revealed already")
    @blp.alt_response(
        503, schema=ErrorSchema, description="The platform cannot open the stored password now; it stays unrevealed"
    )
    def post(self):
        """Reveal the site's Administrator password, once

        Only the owner may (with the `write` scope), and only once: the first call answers the password and marks it
        revealed, every later one answers 410. Operators cannot read it either: it is the
        customer's secret, and the platform keeps it only encrypted.
        """
        current = caller()
        # An operator acting on the tenant has no role here, so this refuses operators too.
        if current.role != Role.OWNER:
            raise error_for(Forbidden("only the tenant's owner may read the site's admin password"))
        require_scope(Scope.WRITE)  # it changes the tenant: the password is revealed once
        settings = current_app.config["PROVISIONING_SETTINGS"]
        revealed = reveal_admin_password(
            db_session(), current.tenant.id, SiteCredentials(settings.site_credentials_key), origin=request_origin()
        )
        return {"data": revealed}, 200, {"Cache-Control": "no-store"}
