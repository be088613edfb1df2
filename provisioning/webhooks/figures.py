"""The webhooks' figures for /metrics and the doctor: what waits, what failed, which endpoints are off."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provisioning.platform.db import utcnow
from provisioning.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint


@dataclass(frozen=True)
class WebhookFigures:
    deliveries: dict[DeliveryStatus, int]
    endpoints_disabled: int
    # How long the most overdue delivery of an enabled endpoint has been due: a sender that keeps up
    # holds it near zero (a lease of a post in flight counts as not due).
    most_overdue_seconds: float


def webhook_figures(session: Session) -> WebhookFigures:
    counts = dict(session.execute(select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)).all())
    disabled = session.scalar(select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(False)))
    now = utcnow()
    oldest_due = session.scalar(
        select(func.min(WebhookDelivery.next_attempt_at))
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now, WebhookEndpoint.enabled)
    )
    return WebhookFigures(
        {status: counts.get(status, 0) for status in DeliveryStatus},
        disabled or 0,
        (now - oldest_due).total_seconds() if oldest_due else 0.0,
    )
