"""``/api/v1/webhooks`` (the tenant's endpoints) and ``/api/v1/platform/webhooks`` (the platform's,
which hear every tenant's events): register, change, rotate, delete, and the delivery log.

One set of views serves both, built by ``webhook_blueprint`` for one kind of owner: a tenant's
members read and its owners and admins write; the platform's are its operators'.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Callable

from flask import current_app, g, url_for
from flask.views import MethodView
from flask_smorest.error_handler import ErrorSchema

from api.auth import authenticate_operator_request, authenticate_request, caller, request_origin, writers_only
from api.errors import http_error
from api.parsing import Blueprint
from api.schemas import PageArgsSchema, page_meta
from api.session import db_session
from api.webhook_schemas import (
    WEBHOOK_CREATE_EXAMPLES,
    SecretRotationSchema,
    WebhookDeliveryDetailResponseSchema,
    WebhookDeliveryListResponseSchema,
    WebhookDeliveryQueryArgsSchema,
    WebhookDeliveryResponseSchema,
    WebhookEndpointCreateSchema,
    WebhookEndpointListResponseSchema,
    WebhookEndpointResponseSchema,
    WebhookEndpointUpdateSchema,
    WebhookEndpointWithSecretResponseSchema,
)
from provisioning.webhooks.endpoints import WebhookEndpoints
from provisioning.webhooks.targets import TargetRefused

NOT_FOUND = "No such endpoint (or delivery), or one of another owner"
SIGNATURES = (
    "Each delivery is a POST of `{\"type\", \"timestamp\", \"data\"}` with the Standard Webhooks headers "
    "`webhook-id` (the same on every attempt of a delivery), `webhook-timestamp` and `webhook-signature` "
    "(`v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`, keyed with the secret's bytes after `whsec_`)."
)


def webhook_blueprint(name: str, url_prefix: str, description: str, for_tenant: bool) -> Blueprint:
    """The endpoints' views for a tenant (``for_tenant``: the request's tenant owns them) or for the platform."""
    blp = Blueprint(name, __name__, url_prefix=url_prefix, description=f"{description} {SIGNATURES}")
    blp.before_request(authenticate_request if for_tenant else authenticate_operator_request)
    writing: Callable = writers_only if for_tenant else (lambda view: view)

    def endpoints() -> WebhookEndpoints:
        owner = caller().tenant.id if for_tenant else None
        settings = current_app.config["PROVISIONING_SETTINGS"]
        return WebhookEndpoints(db_session(), settings, owner, request_origin())

    def committed(result):
        db_session().commit()
        return result

    @blp.route("")
    class Webhooks(MethodView):
        @blp.arguments(PageArgsSchema(), location="query")
        @blp.response(200, WebhookEndpointListResponseSchema)
        def get(self, args):
            """List the webhook endpoints, oldest first

            Page with `page` (from 1) and `size` (1..100).
            """
            found, total = endpoints().list(**args)
            return {"data": found, "meta": page_meta(args["page"], args["size"], total)}

        @writing
        @blp.arguments(WebhookEndpointCreateSchema(), examples=WEBHOOK_CREATE_EXAMPLES)
        @blp.response(201, WebhookEndpointWithSecretResponseSchema)
        @blp.alt_response(409, schema=ErrorSchema, description="There are as many endpoints as allowed")
        def post(self, body):
            """Register an endpoint; its secret is shown this once

            Events of the `event_types` are sent to `url` from now on, signed with `secret`. A URL
            on loopback, a private, link-local or reserved network is refused (422), unless the
            platform allows that network; a name is resolved, and its addresses checked, at each send.
            """
            created_by = caller().user.id if for_tenant else g.operator.id
            made = committed(_refusing_targets(lambda: endpoints().create(**body, created_by=created_by)))
            return {"data": made}, 201, {"Location": url_for(f"{name}.WebhookById", endpoint_id=made.endpoint.id)}

    @blp.route("/<uuid:endpoint_id>")
    class WebhookById(MethodView):
        @blp.response(200, WebhookEndpointResponseSchema)
        @blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
        def get(self, endpoint_id: uuid.UUID):
            """Read an endpoint: whether it is enabled, and why not"""
            return {"data": endpoints().get(endpoint_id)}

        @writing
        @blp.arguments(WebhookEndpointUpdateSchema())
        @blp.response(200, WebhookEndpointResponseSchema)
        @blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
        def patch(self, body, endpoint_id: uuid.UUID):
            """Change an endpoint's URL, event types or description, or enable or disable it

            `"enabled": true` enables an endpoint disabled for its failures: its failures are counted
            afresh and its pending deliveries go out. `false` holds its deliveries until it is enabled.
            """
            return {"data": committed(_refusing_targets(lambda: endpoints().update(endpoint_id, body)))}

        @writing
        @blp.response(200, WebhookEndpointResponseSchema)
        @blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
        def delete(self, endpoint_id: uuid.UUID):
            """Delete an endpoint and its delivery log; the answer is the endpoint as it was"""
            return {"data": committed(endpoints().delete(endpoint_id))}

    @blp.route("/<uuid:endpoint_id>/rotate-secret")
    class WebhookSecret(MethodView):
        @writing
        @blp.arguments(SecretRotationSchema())
        @blp.response(200, WebhookEndpointWithSecretResponseSchema)
        @blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
        def post(self, body, endpoint_id: uuid.UUID):
            """Give an endpoint a new secret, shown this once

            Deliveries are signed with the new secret and, for `overlap_seconds` more (a day by
            default), with the replaced one too: `webhook-signature` then carries both signatures.
            """
            overlap = timedelta(seconds=body["overlap_seconds"])
            return {"data": committed(endpoints().rotate_secret(endpoint_id, overlap))}

    @blp.route("/<uuid:endpoint_id>/deliveries")
    class WebhookDeliveries(MethodView):
        @blp.arguments(WebhookDeliveryQueryArgsSchema(), location="query")
        @blp.response(200, WebhookDeliveryListResponseSchema)
        @blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
        def get(self, args, endpoint_id: uuid.UUID):
            """The endpoint's delivery log, newest first

            Filter with `status` (pending, delivered, failed); page with `page` (from 1) and `size` (1..100).
            """
            found, total = endpoints().deliveries(endpoint_id, **args)
            return {"data": found, "meta": page_meta(args["page"], args["size"], total)}

    @blp.route("/<uuid:endpoint_id>/deliveries/<delivery_id>")
    class WebhookDeliveryById(MethodView):
        @blp.response(200, WebhookDeliveryDetailResponseSchema)
        @blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
        def get(self, endpoint_id: uuid.UUID, delivery_id: str):
            """Read a delivery, with each attempt and how it was answered"""
            return {"data": endpoints().delivery(endpoint_id, delivery_id)}

    @blp.route("/<uuid:endpoint_id>/deliveries/<delivery_id>/redeliver")
    class WebhookRedelivery(MethodView):
        @writing
        @blp.response(202, WebhookDeliveryResponseSchema)
        @blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
        @blp.alt_response(409, schema=ErrorSchema, description="The endpoint is disabled")
        def post(self, endpoint_id: uuid.UUID, delivery_id: str):
            """Send a delivery again, soon, with the same webhook-id

            Whatever became of it: a delivered one is sent once more, a failed one gets one more
            attempt, a pending one goes now rather than at its next retry.
            """
            return {"data": committed(endpoints().redeliver(endpoint_id, delivery_id))}, 202

    return blp


def _refusing_targets(change: Callable):
    """Run ``change``; a URL webhooks may not reach is a 422 about the body's ``url``, as a malformed one is."""
    try:
        return change()
    except TargetRefused as refused:
        raise http_error(422, str(refused), errors={"json": {"url": [str(refused)]}}) from None


tenant_blp = webhook_blueprint(
    "webhooks", "/api/v1/webhooks", "Webhook endpoints of the caller's tenant: where its events are POSTed.", for_tenant=True
)
platform_blp = webhook_blueprint(
    "platform_webhooks",
    "/api/v1/platform/webhooks",
    "The platform's webhook endpoints, which hear every tenant's events. Platform operators only.",
    for_tenant=False,
)
