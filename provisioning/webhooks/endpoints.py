"""Webhook endpoints as their owners manage them: register, change, rotate the secret, delete, and
read the delivery log and redeliver by hand.

An owner is a tenant, or the platform (``owner`` None: its endpoints hear every tenant's events).
Another owner's endpoint, or delivery, is NotFound exactly like a missing one. Every change is
audited in the caller's transaction; the caller commits. A secret is returned whole only by
``create`` and ``rotate_secret``; it is kept encrypted with SITE_CREDENTIALS_KEY, because the
sender needs it to sign.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from provisioning.accounts import audit
from provisioning.errors import Conflict, NotFound
from provisioning.platform.db import page_of, utcnow
from provisioning.platform.settings import Settings
from provisioning.sites.credentials import SiteCredentials
from provisioning.webhooks.models import DeliveryStatus, EventType, WebhookDelivery, WebhookEndpoint
from provisioning.webhooks.signing import MESSAGE_ID, new_secret
from provisioning.webhooks.targets import check_url, origin

MAX_ENDPOINTS_PER_OWNER = 20
DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)


@dataclass(frozen=True)
class WithSecret:
    """An endpoint and its secret in the clear: the one answer that shows it. Reads as the endpoint
    too, so the endpoint's schema with a ``secret`` field dumps it."""

    endpoint: WebhookEndpoint
    secret: str

    def __getattr__(self, name: str):
        return getattr(self.endpoint, name)


class WebhookEndpoints:
    def __init__(self, session: Session, settings: Settings, owner: uuid.UUID | None, origin: audit.Origin):
        self.session = session
        self.settings = settings
        self.owner = owner
        self.origin = origin
        self.cipher = SiteCredentials(settings.site_credentials_key)

    def create(self, url: str, event_types: list[str], description: str, created_by: uuid.UUID | None) -> WithSecret:
        """Raises TargetRefused for a URL webhooks may not reach, Conflict past MAX_ENDPOINTS_PER_OWNER."""
        check_url(url, self.settings.webhook_allowed_networks)
        if self.session.scalar(select(func.count()).select_from(WebhookEndpoint).where(self._owned())) >= MAX_ENDPOINTS_PER_OWNER:
            raise Conflict(f"at most {MAX_ENDPOINTS_PER_OWNER} webhook endpoints each; delete one first")
        secret = new_secret()
        endpoint = WebhookEndpoint(
            tenant_id=self.owner, url=url, description=description, event_types=_values(event_types), enabled=True,
            secret_encrypted=self.cipher.encrypt(secret), consecutive_failures=0, created_by_id=created_by,
        )  # fmt: skip
        self.session.add(endpoint)
        self._audit("webhook.created", endpoint, f"{origin(url)} for {', '.join(endpoint.event_types)}")
        return WithSecret(endpoint, secret)

    def list(self, page: int, size: int) -> tuple[Sequence[WebhookEndpoint], int]:
        """One page of the owner's endpoints, oldest first, and the total."""
        query = select(WebhookEndpoint).where(self._owned()).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        rows, total = page_of(self.session, query, page, size)
        return [row[0] for row in rows], total

    def get(self, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        endpoint = self.session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None or endpoint.tenant_id != self.owner:
            raise NotFound("webhook endpoint not found")
        return endpoint

    def update(self, endpoint_id: uuid.UUID, changes: dict) -> WebhookEndpoint:
        """Change ``url``, ``description``, ``event_types`` or ``enabled``. Enabling starts its failure
        count afresh and resumes its pending deliveries; disabling by hand holds them."""
        endpoint = self.get(endpoint_id)
        if "url" in changes:
            check_url(changes["url"], self.settings.webhook_allowed_networks)
        for name in ("url", "description"):
            if name in changes:
                setattr(endpoint, name, changes[name])
        if "event_types" in changes:
            endpoint.event_types = _values(changes["event_types"])
        if changes.get("enabled") is True and not endpoint.enabled:
            endpoint.enabled, endpoint.disabled_at, endpoint.disabled_reason = True, None, None
            endpoint.consecutive_failures, endpoint.failing_since = 0, None
        elif changes.get("enabled") is False and endpoint.enabled:
            endpoint.enabled, endpoint.disabled_at, endpoint.disabled_reason = False, utcnow(), f"disabled by {self.origin.actor}"
        changed = ", ".join(f"{name}={_audited(name, getattr(endpoint, name))}" for name in sorted(changes))
        self._audit("webhook.updated", endpoint, changed)
        return endpoint

    def delete(self, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        """Delete an endpoint with its delivery log; the answer is the endpoint as it was."""
        endpoint = self.get(endpoint_id)
        self._audit("webhook.deleted", endpoint, origin(endpoint.url))
        self.session.delete(endpoint)
        return endpoint

    def rotate_secret(self, endpoint_id: uuid.UUID, overlap: timedelta = DEFAULT_ROTATION_OVERLAP) -> WithSecret:
        """A new secret signs from now on; the one it replaces signs beside it for ``overlap`` more
        (none: at once no more), so a receiver can switch to the new one without missing a delivery."""
        endpoint = self.get(endpoint_id)
        secret = new_secret()
        endpoint.previous_secret_encrypted = endpoint.secret_encrypted if overlap else None
        endpoint.previous_secret_expires_at = utcnow() + overlap if overlap else None
        endpoint.secret_encrypted = self.cipher.encrypt(secret)
        self._audit("webhook.secret_rotated", endpoint, f"the previous secret signs for {overlap} more")
        return WithSecret(endpoint, secret)

    def deliveries(
        self, endpoint_id: uuid.UUID, page: int, size: int, status: DeliveryStatus | None = None
    ) -> tuple[Sequence[WebhookDelivery], int]:
        """One page of an endpoint's delivery log, newest first, and the total."""
        conditions = [WebhookDelivery.endpoint_id == self.get(endpoint_id).id]
        if status is not None:
            conditions.append(WebhookDelivery.status == status)
        query = select(WebhookDelivery).where(*conditions).order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        rows, total = page_of(self.session, query, page, size)
        return [row[0] for row in rows], total

    def delivery(self, endpoint_id: uuid.UUID, delivery_id: str) -> WebhookDelivery:
        """A delivery of the endpoint (its ``attempts`` load when read); an id of no delivery's form
        (a NUL byte PostgreSQL would refuse) is not looked up."""
        delivery = self.session.get(WebhookDelivery, delivery_id) if MESSAGE_ID.fullmatch(delivery_id) else None
        if delivery is None or delivery.endpoint_id != self.get(endpoint_id).id:
            raise NotFound("webhook delivery not found")
        return delivery

    def redeliver(self, endpoint_id: uuid.UUID, delivery_id: str) -> WebhookDelivery:
        """Send a delivery again soon, with the same ``webhook-id``, whatever became of it. A failed one
        gets one more attempt (no new schedule); a pending one is sent now rather than at its time.

        Raises Conflict while the endpoint is disabled: the attempt would wait until it is enabled."""
        delivery = self.delivery(endpoint_id, delivery_id)
        endpoint = self.get(endpoint_id)
        if not endpoint.enabled:
            raise Conflict("the endpoint is disabled; enable it first (PATCH with enabled: true)")
        # Both columns in one UPDATE, whatever this session read: an attempt in flight may record
        # its answer (delivered, or failed) first, and the row must still end pending and due.
        self.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id)
            .values(status=DeliveryStatus.PENDING, next_attempt_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        self.session.refresh(delivery)
        self._audit("webhook.redelivered", endpoint, delivery.id)
        return delivery

    def _owned(self):
        return WebhookEndpoint.tenant_id.is_(None) if self.owner is None else WebhookEndpoint.tenant_id == self.owner

    def _audit(self, action: str, endpoint: WebhookEndpoint, detail: str) -> None:
        self.session.flush()
        audit.record(self.session, self.origin, action, self.owner, f"webhook {endpoint.id}", detail)


def _audited(name: str, value) -> str:
    """A changed field as the audit trail keeps it: of a URL, its origin alone (its path or query may hold a secret)."""
    return origin(value) if name == "url" else str(value)


def _values(event_types: list) -> list[str]:
    """Event types as stored, in their JSON list: their names (``job.completed``), whether given as names or members."""
    return [EventType(event_type).value for event_type in event_types]
