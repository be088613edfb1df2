"""``/healthz`` (the process answers) and ``/readyz`` (it can take jobs); no token needed."""

from flask import current_app
from flask.views import MethodView

from api.parsing import Blueprint
from provisioning.health import readiness

blp = Blueprint("health", __name__, description="For load balancers and process managers; no token needed.")


@blp.route("/healthz")
class Health(MethodView):
    @blp.response(200)
    def get(self):
        """The process answers"""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.response(200)
    @blp.alt_response(503, description="A part the API needs is down; `checks` says which and what to do")
    def get(self):
        """The database is reachable, its schema at head, and the broker reachable"""
        checks = readiness(current_app.config["PROVISIONING_SETTINGS"])
        body = {check.name: {"ok": check.ok, "detail": check.detail, "remedy": check.remedy} for check in checks}
        down = [check.name for check in checks if not check.ok]
        if down:
            return {
                "code": 503,
                "status": "Service Unavailable",
                "message": f"not ready: {', '.join(down)} down",
                "checks": body,
            }, 503
        return {"status": "ready", "checks": body}
