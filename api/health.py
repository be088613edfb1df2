"""``/healthz`` (the process answers) and ``/readyz`` (it can take jobs); no token needed.

Anyone who can reach the port may ask, so ``/readyz`` names each part and whether it is ok, and
nothing more: which user, host and database a part is reached at, and why it failed, go to the
log (and to ``provisioning doctor``), where the operator looks and strangers do not.
"""

import logging

from flask import current_app, jsonify
from flask.views import MethodView

from api.parsing import Blueprint
from api.schemas import HealthSchema, NotReadySchema, ReadinessSchema
from provisioning.operations.health import readiness

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__, description="For load balancers and process managers; no token needed.")


@blp.route("/healthz")
class Health(MethodView):
    @blp.doc(security=[])
    @blp.response(200, HealthSchema)
    def get(self):
        """The process answers"""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.doc(security=[])
    @blp.response(200, ReadinessSchema)
    @blp.alt_response(503, schema=NotReadySchema, description="A part the API needs is down; `checks` says which")
    def get(self):
        """The database is reachable, its schema at head, and the broker reachable"""
        checks = readiness(current_app.config["PROVISIONING_SETTINGS"])
        states = {check.name: {"ok": check.ok} for check in checks}
        down = [check for check in checks if not check.ok]
        if not down:
            return {"status": "ready", "checks": states}
        log.warning("not ready: %s", "; ".join(check.line() for check in down))
        message = f"not ready: {', '.join(check.name for check in down)} down"
        body = {"code": 503, "status": "Service Unavailable", "message": message, "checks": states}
        answer = jsonify(NotReadySchema().dump(body))
        answer.status_code = 503  # returned whole: the 200 schema above would drop the error's fields
        return answer
