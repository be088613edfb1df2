"""The fan-out: each event waiting in the webhooks' outbox becomes one delivery for each enabled
endpoint that wants it, in one transaction with the removal of the outbox rows.

Triggers fill the outbox (``WebhookOutboxEntry``) with the job events that changed a job's status
and with the tenants' status changes. A batch is read with FOR UPDATE SKIP LOCKED, its deliveries
inserted and its rows deleted before one commit: a fan-out cut short leaves the rows and makes
nothing, so the next makes it all. Each delivery's ``event_key`` is unique per endpoint (``INSERT
... ON CONFLICT DO NOTHING``), so even two fan-outs of one event make one delivery per endpoint.

Every body is ``{"type": ..., "timestamp": <when the event happened, ISO 8601>, "data": {...}}``,
frozen at fan-out: a retry days later sends what was true when it happened.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from provisioning.enums import BackupStatus, JobStatus, JobType
from provisioning.models import JobEvent, ProvisioningJob, SiteBackup, Tenant
from provisioning.platform.db import utcnow
from provisioning.webhooks.models import DeliveryStatus, EventType, WebhookDelivery, WebhookEndpoint, WebhookOutboxEntry
from provisioning.webhooks.signing import new_message_id

BATCH_SIZE = 200
# The job statuses webhooks announce; `cancelling` is a step on the way to `cancelled`, not an outcome.
JOB_EVENT_TYPES = {
    JobStatus.PENDING: EventType.JOB_CREATED,
    JobStatus.RUNNING: EventType.JOB_STARTED,
    JobStatus.COMPLETED: EventType.JOB_COMPLETED,
    JobStatus.FAILED: EventType.JOB_FAILED,
    JobStatus.CANCELLED: EventType.JOB_CANCELLED,
}

WAITING = (
    select(WebhookOutboxEntry)
    .order_by(WebhookOutboxEntry.id)
    .limit(BATCH_SIZE)
    .with_for_update(skip_locked=True)
)
JOB_EVENTS = (
    select(
        JobEvent.id, JobEvent.status, JobEvent.created_at, ProvisioningJob.id.label("job_id"), ProvisioningJob.job_type,
        ProvisioningJob.error, Tenant.id.label("tenant_id"), Tenant.slug,
    )  # fmt: skip
    .join(ProvisioningJob, ProvisioningJob.id == JobEvent.job_id)
    .join(Tenant, Tenant.id == ProvisioningJob.tenant_id)
    .where(JobEvent.id.in_(bindparam("ids", expanding=True)))
    .order_by(JobEvent.id)
)
TENANT_SLUGS = select(Tenant.id, Tenant.slug).where(Tenant.id.in_(bindparam("ids", expanding=True)))
BACKUPS_OF_JOBS = select(SiteBackup.job_id, SiteBackup.id, SiteBackup.size, SiteBackup.completed_at).where(
    SiteBackup.job_id.in_(bindparam("job_ids", expanding=True)), SiteBackup.status == BackupStatus.COMPLETED
)


@dataclass(frozen=True)
class Event:
    """Something to tell endpoints: ``key`` names it for good (``job_event:<id>``), so it is delivered
    once per endpoint; ``tenant_id`` None is the platform's own (only platform endpoints hear it)."""

    key: str
    type: EventType
    tenant_id: uuid.UUID | None
    occurred_at: datetime
    data: dict

    def body(self) -> dict:
        return {"type": self.type.value, "timestamp": self.occurred_at.isoformat(), "data": self.data}


def fan_out(connection: Connection) -> int:
    """Make the deliveries of the next batch of the outbox and remove it; how many events were read.

    The caller commits (the deliveries and the removal go together or not at all)."""
    entries = connection.execute(WAITING).all()
    if not entries:
        return 0
    job_event_ids = [entry.job_event_id for entry in entries if entry.job_event_id is not None]
    tenant_entries = [entry for entry in entries if entry.job_event_id is None]
    events = _job_events(connection, connection.execute(JOB_EVENTS, {"ids": job_event_ids}).all()) if job_event_ids else []
    if tenant_entries:
        slugs = dict(connection.execute(TENANT_SLUGS, {"ids": list({entry.tenant_id for entry in tenant_entries})}).all())
        events += [_tenant_event(entry, slugs[entry.tenant_id]) for entry in tenant_entries]
    add_deliveries(connection, events)
    connection.execute(delete(WebhookOutboxEntry).where(WebhookOutboxEntry.id.in_([entry.id for entry in entries])))
    return len(entries)


def add_deliveries(connection: Connection, events: list[Event]) -> int:
    """Insert a pending delivery, due now, of each event for each enabled endpoint that wants it."""
    if not events:
        return 0
    tenant_ids = {event.tenant_id for event in events if event.tenant_id is not None}
    endpoints = connection.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.tenant_id, WebhookEndpoint.event_types).where(
            WebhookEndpoint.enabled, or_(WebhookEndpoint.tenant_id.is_(None), WebhookEndpoint.tenant_id.in_(tenant_ids))
        )
    ).all()
    now = utcnow()
    rows = [
        {
            "id": new_message_id(), "endpoint_id": endpoint.id, "event_type": event.type, "event_key": event.key,
            "payload": event.body(), "status": DeliveryStatus.PENDING, "attempt_count": 0, "next_attempt_at": now,
            "created_at": now,
        }  # fmt: skip
        for event in events
        for endpoint in endpoints
        if event.type.value in endpoint.event_types and endpoint.tenant_id in (None, event.tenant_id)
    ]
    if rows:
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        connection.execute(
            dialect.insert(WebhookDelivery).on_conflict_do_nothing(index_elements=["endpoint_id", "event_key"]), rows
        )
    return len(rows)


def _job_events(connection: Connection, rows) -> list[Event]:
    events = []
    backed_up = [row.job_id for row in rows if row.status == JobStatus.COMPLETED and row.job_type == JobType.BACKUP_SITE]
    backups = {b.job_id: b for b in connection.execute(BACKUPS_OF_JOBS, {"job_ids": backed_up})} if backed_up else {}
    for row in rows:
        event_type = JOB_EVENT_TYPES.get(row.status)
        if event_type is None:
            continue
        job = {
            "job_id": str(row.job_id), "job_type": row.job_type.value, "status": row.status.value,
            "tenant_id": str(row.tenant_id), "tenant_slug": row.slug,
        }  # fmt: skip
        if row.status == JobStatus.FAILED:
            job["error"] = row.error
        events.append(Event(f"job_event:{row.id}", event_type, row.tenant_id, row.created_at, job))
        if row.status == JobStatus.COMPLETED and (backup := backups.get(row.job_id)) is not None:
            about = {"id": str(backup.id), "size": backup.size, "completed_at": backup.completed_at.isoformat()}
            data = {key: job[key] for key in ("job_id", "tenant_id", "tenant_slug")} | {"backup": about}
            events.append(Event(f"job_event:{row.id}:backup", EventType.BACKUP_COMPLETED, row.tenant_id, row.created_at, data))
    return events


def _tenant_event(entry, slug: str) -> Event:
    data = {
        "tenant_id": str(entry.tenant_id), "tenant_slug": slug, "status": entry.status, "previous_status": entry.previous_status,
    }  # fmt: skip
    return Event(f"tenant_change:{entry.id}", EventType.TENANT_STATUS_CHANGED, entry.tenant_id, entry.created_at, data)
