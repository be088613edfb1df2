"""``/api/v1/tenants``: the caller's tenant."""

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import authenticate_request, caller
from api.schemas import TenantResponseSchema

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
