"""The REST API: ``create_app()`` builds the Flask application served by gunicorn."""

from __future__ import annotations

import swagger_ui_bundle
from flask import Flask, send_from_directory

from api import (
    backups,
    errors,
    health,
    jobs,
    members,
    platform_tenants,
    servers,
    tenant_tokens,
    tenants,
    tokens,
    users,
    webhooks,
)
from api.auth import TENANT_HEADER, TENANT_HEADER_DOC
from api.errors import ProvisioningApi
from api.forwarded import TrustedProxies
from api.limits import init_rate_limits
from api.metrics import init_metrics
from api.request_log import init_request_log
from api.session import init_sessions
from provisioning.messaging.broker import Dispatcher
from provisioning.platform import logs
from provisioning.platform.settings import Settings, settings_or_exit

SWAGGER_ASSETS_URL = "/docs/assets/"
# The largest request body taken (413 above it). Our largest valid body is under 100 bytes; the
# limit stays small because the server holds each body whole in memory before the app runs
# (api.serving), for every connection at once.
MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; without ``settings`` they come from the environment (a bad value stops here)."""
    settings = settings or settings_or_exit()
    logs.configure("web", settings.log_format, settings.log_level)
    app = Flask(__name__)
    # The client's address (for the audit trail, and /metrics' loopback rule): behind a proxy, in
    # X-Forwarded-For, believed only as far as the TRUSTED_PROXIES (PROXY_COUNT at most) wrote it.
    app.wsgi_app = TrustedProxies(app.wsgi_app, settings.trusted_proxies, settings.proxy_count)
    app.config.update(
        API_TITLE="ERPMax provisioning",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_ASSETS_URL,
        API_SPEC_OPTIONS={
            "components": {
                "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            },
            # Every operation needs a token, unless it says `security: []` (health).
            "security": [{"bearerAuth": []}],
        },
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        PROVISIONING_SETTINGS=settings,
    )
    app.extensions["provisioning_dispatcher"] = Dispatcher(settings)
    init_sessions(app, settings)
    init_request_log(app)
    init_metrics(app)
    # The blueprints acting for the request's tenant (X-Tenant-ID), and those acting for no tenant
    # or the one their paths name. Every operation that needs a token is rate limited, and
    # documents its 429; the health checks are not.
    acting_for_a_tenant = (jobs.blp, backups.blp, tenants.blp, webhooks.tenant_blp)
    acting_on_their_paths = (
        servers.blp, platform_tenants.blp, members.blp, tenant_tokens.blp, users.blp, tokens.blp, webhooks.platform_blp,
    )  # fmt: skip
    limited = [blueprint.name for blueprint in acting_for_a_tenant + acting_on_their_paths]
    rate_limit_docs = init_rate_limits(app, settings, limited)

    api = ProvisioningApi(app, spec_kwargs={"extra_plugins": [rate_limit_docs]})
    api.spec.components.parameter(TENANT_HEADER, "header", TENANT_HEADER_DOC)
    for blueprint in acting_for_a_tenant:
        api.register_blueprint(blueprint, parameters=[TENANT_HEADER])
    for blueprint in acting_on_their_paths:
        api.register_blueprint(blueprint)
    api.register_blueprint(health.blp)
    errors.register(app, api)

    @app.get(f"{SWAGGER_ASSETS_URL}<path:filename>")
    def swagger_assets(filename: str):
        """Swagger UI's scripts and styles, served locally so /docs works on a closed network."""
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)

    return app
