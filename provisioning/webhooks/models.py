"""The webhook tables: endpoints, their deliveries and each delivery's attempts, and the outbox of
job and tenant status changes that triggers write (migration 0016)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

# models.py's, so a webhook's status is stored as every other status is: its value in a VARCHAR.
from provisioning.models import _enum_column as enum_column
from provisioning.platform.db import Base, UTCDateTime, utcnow

MAX_URL_LENGTH = 2000


class EventType(str, enum.Enum):
    JOB_CREATED = "job.created"
    JOB_STARTED = "job.started"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    BACKUP_COMPLETED = "backup.completed"
    TENANT_STATUS_CHANGED = "tenant.status_changed"
    ENDPOINT_DISABLED = "webhook.endpoint_disabled"


class DeliveryStatus(str, enum.Enum):
    """``pending`` until an attempt is answered 2xx (``delivered``) or the last retry fails (``failed``);
    a redelivery by hand makes it ``pending`` again."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


_PENDING_SQL = "status = 'pending'"


class WebhookEndpoint(Base):
    """Where a tenant (``tenant_id``) or the platform (NULL: every tenant's events) wants events.

    The secret signs every delivery; it is kept encrypted with SITE_CREDENTIALS_KEY because the
    sender needs it whole. After a rotation the previous secret signs too, until
    ``previous_secret_expires_at``, so a receiver can switch at leisure. ``failing_since`` is the
    first failed attempt of the current unbroken run of failures and ``consecutive_failures`` its
    length: together they decide when the endpoint is disabled (``webhooks.sender``).
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(MAX_URL_LENGTH))
    description: Mapped[str] = mapped_column(String(500), default="")
    event_types: Mapped[list] = mapped_column(JSON)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint. ``id`` is its ``webhook-id``, the same on every attempt, so a
    receiver can drop a repeat; ``event_key`` names the event, unique per endpoint, so a fan-out
    done twice makes no second delivery. ``payload`` is the body, frozen at fan-out."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_key"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", text("created_at DESC"), text("id DESC")),
        # What the sender looks at: the pending ones, by when they are due.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text(_PENDING_SQL),
            sqlite_where=text(_PENDING_SQL),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_type: Mapped[EventType] = mapped_column(enum_column(EventType, length=40))
    event_key: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[DeliveryStatus] = mapped_column(enum_column(DeliveryStatus), default=DeliveryStatus.PENDING)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Read for one delivery's detail only; the database deletes them with it.
    attempts: Mapped[list[WebhookAttempt]] = relationship(order_by="WebhookAttempt.id", viewonly=True)


class WebhookAttempt(Base):
    """One POST of a delivery and how it was answered: the delivery log's detail."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)


class WebhookOutboxEntry(Base):
    """An event waiting for the fan-out: a job's status change (``job_event_id``) or a tenant's
    (``tenant_id``, ``previous_status``, ``status``).

    Triggers write them (migration 0016), in the transaction of the change, whichever statement
    made it: a tenant's status changes in several (a move's, a claim's, the job records'), and a
    job event is written by several too. The fan-out deletes each once its deliveries are made.
    An outbox of the webhooks' own rather than a mark on ``job_events``: the event relay takes those
    rows with SKIP LOCKED in order, and would pass over (and so announce out of order) any row the
    fan-out held.
    """

    __tablename__ = "webhook_outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_event_id: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("job_events.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    previous_status: Mapped[str | None] = mapped_column(String(20))
    status: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
