"""Marshmallow schemas of the webhooks' API: endpoints, their secrets, the delivery log."""

from marshmallow import Schema, ValidationError, fields, validate

from api.schemas import JsonBoolean, PageArgsSchema, list_response, single_response
from provisioning.webhooks.endpoints import DEFAULT_ROTATION_OVERLAP
from provisioning.webhooks.models import MAX_URL_LENGTH, DeliveryStatus, EventType

MAX_ROTATION_OVERLAP_SECONDS = 7 * 24 * 3600
EXAMPLE_URL = "https://hooks.example.com/erpmax"
EXAMPLE_EVENT_TYPES = ["job.completed", "job.failed", "backup.completed"]


def _unique(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValidationError("must not repeat an event type")
    return values


URL = fields.String(
    # Only the form is checked here; where the URL leads, by ``webhooks.targets`` (a 422 too).
    validate=[
        validate.Length(min=1, max=MAX_URL_LENGTH),
        validate.URL(schemes={"http", "https"}, require_tld=False, error="must be an http or https URL"),
    ],
    metadata={
        "example": EXAMPLE_URL,
        "format": "uri",
        "pattern": "^https?://",
        "description": "Where events are POSTed: http or https; not on loopback or private networks, unless the "
        "platform allows them (WEBHOOK_ALLOWED_NETWORKS). Redirects are not followed.",
    },
)
EVENT_TYPES = fields.List(
    fields.Enum(EventType, by_value=True),
    validate=[validate.Length(min=1, max=len(EventType)), _unique],
    metadata={"example": EXAMPLE_EVENT_TYPES, "description": "The event types to receive", "uniqueItems": True},
)
DESCRIPTION = fields.String(
    validate=[
        validate.Length(max=500),
        validate.Regexp(r"^[^\x00-\x1f\x7f]*$", error="must not contain control characters"),
    ],
    metadata={"example": "Billing"},
)


class WebhookEndpointSchema(Schema):
    id = fields.UUID()
    tenant_id = fields.UUID(allow_none=True, metadata={"description": "null: a platform endpoint, for every tenant's events"})
    url = fields.String(metadata={"example": EXAMPLE_URL})
    description = fields.String()
    event_types = fields.List(fields.String(metadata={"enum": [event_type.value for event_type in EventType]}))
    enabled = fields.Boolean()
    disabled_at = fields.DateTime(allow_none=True)
    disabled_reason = fields.String(allow_none=True, metadata={"description": "Who disabled it, or which failures did"})
    consecutive_failures = fields.Integer(metadata={"description": "Failed attempts in a row since the last success"})
    failing_since = fields.DateTime(allow_none=True, metadata={"description": "The first of those failed attempts"})
    previous_secret_expires_at = fields.DateTime(
        allow_none=True, metadata={"description": "Until then, the secret replaced by the last rotation signs too"}
    )
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class WebhookEndpointWithSecretSchema(WebhookEndpointSchema):
    secret = fields.String(
        metadata={
            "description": "Signs every delivery (webhook-signature); shown only now, keep it",
            "example": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        }
    )


class WebhookEndpointCreateSchema(Schema):
    url = fields.String(required=True, validate=URL.validate, metadata=URL.metadata)
    event_types = fields.List(
        fields.Enum(EventType, by_value=True), required=True, validate=EVENT_TYPES.validate, metadata=EVENT_TYPES.metadata
    )
    description = fields.String(load_default="", validate=DESCRIPTION.validate, metadata=DESCRIPTION.metadata)


class WebhookEndpointUpdateSchema(Schema):
    url = URL
    event_types = EVENT_TYPES
    description = DESCRIPTION
    enabled = JsonBoolean(
        metadata={"example": True, "description": "true: enable again (failures counted afresh); false: hold"}
    )


class SecretRotationSchema(Schema):
    overlap_seconds = fields.Integer(
        load_default=int(DEFAULT_ROTATION_OVERLAP.total_seconds()),
        validate=validate.Range(min=0, max=MAX_ROTATION_OVERLAP_SECONDS),
        metadata={"description": "How long the replaced secret still signs beside the new one (0: not at all)"},
    )


class WebhookDeliverySchema(Schema):
    id = fields.String(metadata={"description": "Its webhook-id: the same on every attempt", "example": "msg_2b7f0c1e"})
    endpoint_id = fields.UUID()
    event_type = fields.Enum(EventType, by_value=True)
    status = fields.Enum(DeliveryStatus, by_value=True, metadata={"description": "pending, delivered or failed"})
    attempt_count = fields.Integer()
    next_attempt_at = fields.DateTime(allow_none=True, metadata={"description": "When a pending delivery is tried next"})
    last_status_code = fields.Integer(allow_none=True, metadata={"description": "The HTTP status of the last attempt"})
    last_error = fields.String(allow_none=True)
    payload = fields.Dict(metadata={"description": 'The body POSTed: {"type", "timestamp", "data"}'})
    created_at = fields.DateTime()
    delivered_at = fields.DateTime(allow_none=True)


class WebhookAttemptSchema(Schema):
    attempted_at = fields.DateTime()
    status_code = fields.Integer(allow_none=True, metadata={"description": "null: no answer (refused, timed out, ...)"})
    error = fields.String(allow_none=True)
    duration_ms = fields.Integer()


class WebhookDeliveryDetailSchema(WebhookDeliverySchema):
    attempts = fields.List(fields.Nested(WebhookAttemptSchema), metadata={"description": "Every attempt, oldest first"})


class WebhookDeliveryQueryArgsSchema(PageArgsSchema):
    status = fields.Enum(DeliveryStatus, by_value=True)


WEBHOOK_CREATE_EXAMPLES = {
    "jobs": {"summary": "Job outcomes and backups", "value": {"url": EXAMPLE_URL, "event_types": EXAMPLE_EVENT_TYPES}},
    "tenant": {
        "summary": "The tenant's status, for a dashboard",
        "value": {"url": EXAMPLE_URL, "event_types": ["tenant.status_changed"], "description": "Status page"},
    },
}

WebhookEndpointResponseSchema = single_response(WebhookEndpointSchema, "WebhookEndpointResponse")
WebhookEndpointWithSecretResponseSchema = single_response(WebhookEndpointWithSecretSchema, "WebhookEndpointWithSecretResponse")
WebhookEndpointListResponseSchema = list_response(WebhookEndpointSchema, "WebhookEndpointListResponse")
WebhookDeliveryResponseSchema = single_response(WebhookDeliverySchema, "WebhookDeliveryResponse")
WebhookDeliveryDetailResponseSchema = single_response(WebhookDeliveryDetailSchema, "WebhookDeliveryDetailResponse")
WebhookDeliveryListResponseSchema = list_response(WebhookDeliverySchema, "WebhookDeliveryListResponse")
