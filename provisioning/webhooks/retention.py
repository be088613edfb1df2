"""How long the delivery log is kept: a delivery that was delivered or failed for good is deleted,
with its attempts, ``KEEP_DELIVERIES`` after it was made; the sweep does it. A pending one stays,
whatever its age (a disabled endpoint's wait to be sent)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from provisioning.platform.db import utcnow
from provisioning.webhooks.models import DeliveryStatus, WebhookDelivery

KEEP_DELIVERIES = timedelta(days=30)


def forget_old_deliveries(session: Session, keep: timedelta = KEEP_DELIVERIES) -> int:
    """Delete the finished deliveries made more than ``keep`` ago; how many. The caller commits."""
    finished = WebhookDelivery.status.in_((DeliveryStatus.DELIVERED, DeliveryStatus.FAILED))
    return session.execute(delete(WebhookDelivery).where(finished, WebhookDelivery.created_at < utcnow() - keep)).rowcount
