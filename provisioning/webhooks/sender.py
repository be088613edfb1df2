"""The sender: posts the deliveries that are due, signed, records each attempt, schedules the
retries, and disables an endpoint that has only failed for a day.

At least once, never lost: a delivery is taken by moving its ``next_attempt_at`` a lease ahead
(``lease``: twice the timeout and a margin) in a transaction of its own, and only the attempt's
answer makes it ``delivered``. A sender that dies mid-post leaves it ``pending``, due again once
the lease ends, when it goes out again with the same ``webhook-id``; a receiver drops the repeat
by that id. The lease a claim set is its token: an answer is written only while the delivery is
still pending under that very lease (compare-and-set), so an attempt that lost it (a redelivery by
hand, or a second sender once the lease ended) cannot overwrite the newer outcome nor count a
failure against the endpoint; it is kept in the attempts as what happened, marked late.

An attempt is bounded as a whole by WEBHOOK_TIMEOUT_SECONDS: the DNS lookup, the connection, the
request and the answer's status line and headers share one deadline, and a receiver still
trickling its answer then has its connection cut (``post``). The body of the answer is not read.

Deliveries are sent concurrently (``threads``), in no promised order, and a round waits for its
slowest post. So that an endpoint that hangs cannot hold the others up: a round takes at most one
delivery of each endpoint, the due deliveries of endpoints that answered their last attempt first
(then those of failing endpoints), each by its due time. A hanging endpoint costs the others one
timeout at most, however many of its deliveries are due.

Retries: an attempt not answered 2xx in time is tried again after 5 s, 5 min, 30 min, 2 h, 5 h,
10 h and 10 h (``RETRY_DELAYS``): eight attempts over about 28 hours; the delivery is ``failed``
after the last. An endpoint whose attempts have all failed, ``DISABLE_AFTER_FAILURES`` in a row at
least, since a day (``DISABLE_AFTER``) is disabled: its pending deliveries wait, the reason is on
its record and in the audit trail, and a ``webhook.endpoint_disabled`` event goes to its owner's
other endpoints. Enabling it again (API) resumes its deliveries.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import urllib3
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioning.accounts import audit
from provisioning.platform.db import utcnow
from provisioning.platform.settings import Settings
from provisioning.sites.credentials import SiteCredentials
from provisioning.webhooks.fanout import Event, add_deliveries
from provisioning.webhooks.models import DeliveryStatus, EventType, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from provisioning.webhooks.signing import signed_headers
from provisioning.webhooks.targets import ResolvedTarget, origin, resolve

log = logging.getLogger(__name__)

RETRY_DELAYS = tuple(
    timedelta(seconds=seconds) for seconds in (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
DISABLE_AFTER = timedelta(days=1)
DISABLE_AFTER_FAILURES = 5
# Deliveries posted at once. A round claims no more than this: each claimed delivery is posted at
# once, so its lease (counted from the claim) covers its post, and a round lasts one timeout at most.
SENDER_THREADS = 4
# A lease is twice the timeout and this: a post is cut at the timeout, and recording its answer
# (a transaction) must end well before another sender may take the delivery.
LEASE_MARGIN_SECONDS = 10.0
LATE = "late: the delivery was taken over meanwhile (redelivered, or its lease ran out), so this answer was not applied"
USER_AGENT = "ERPMax-Webhooks/1"
MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class Claimed:
    """A delivery taken for one attempt, with what it takes to sign and send it."""

    id: str
    payload: dict
    url: str
    signing_secrets: list[str]
    lease: datetime  # the next_attempt_at the claim set: the answer is written only while it is still there


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return _successful(self.status_code)


def _successful(status_code: int | None) -> bool:
    return status_code is not None and 200 <= status_code < 300


class WebhookSender:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], threads: int = SENDER_THREADS):
        self.settings = settings
        self.threads = threads
        self.sessions = sessions
        self.cipher = SiteCredentials(settings.site_credentials_key)
        self.lease = timedelta(seconds=2 * settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook-sender")

    def send_due(self) -> int:
        """Post the deliveries due now, one per thread at most, and record how each was answered; how many were."""
        claimed = self.claim(self.threads)
        list(self._pool.map(self.attempt, claimed))  # each records itself; this waits for them all
        return len(claimed)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def claim(self, limit: int) -> list[Claimed]:
        """Take due deliveries of enabled endpoints for one lease, the first due of each endpoint only,
        those of healthy endpoints first (rows another sender holds are left to it)."""
        now = utcnow()
        is_due = (
            WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now, WebhookEndpoint.enabled
        )  # fmt: skip
        by_endpoint = func.row_number().over(partition_by=WebhookDelivery.endpoint_id, order_by=WebhookDelivery.next_attempt_at)
        first_due = (
            select(WebhookDelivery.id, by_endpoint.label("rank"))
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(*is_due)
            .subquery()
        )
        due = (
            select(
                WebhookDelivery.id, WebhookDelivery.payload, WebhookEndpoint.url, WebhookEndpoint.secret_encrypted,
                WebhookEndpoint.previous_secret_encrypted, WebhookEndpoint.previous_secret_expires_at,
            )  # fmt: skip
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(*is_due, WebhookDelivery.id.in_(select(first_due.c.id).where(first_due.c.rank == 1)))
            .order_by(WebhookEndpoint.consecutive_failures > 0, WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(of=WebhookDelivery, skip_locked=True)
        )
        with self.sessions() as session:
            rows = session.execute(due).all()
            if not rows:
                return []
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_([row.id for row in rows]))
                .values(next_attempt_at=now + self.lease)
            )
            session.commit()
        return [Claimed(row.id, row.payload, row.url, self._secrets(row, now), now + self.lease) for row in rows]

    def attempt(self, claimed: Claimed) -> Outcome | None:
        """Post one delivery and record the answer. A failure of ours (the database down) is logged, and
        leaves the delivery pending to the end of its lease: then it is sent again."""
        try:
            outcome = self._post(claimed)
            self._record(claimed, outcome)
            return outcome
        except Exception:
            log.exception("webhook delivery %s: the attempt could not be recorded; it is sent again", claimed.id)
            return None

    def _secrets(self, row, now: datetime) -> list[str]:
        current = [self.cipher.decrypt(row.secret_encrypted)]
        if row.previous_secret_encrypted and row.previous_secret_expires_at and row.previous_secret_expires_at > now:
            return [*current, self.cipher.decrypt(row.previous_secret_encrypted)]
        return current

    def _post(self, claimed: Claimed) -> Outcome:
        body = json.dumps(claimed.payload, separators=(",", ":")).encode()
        headers = signed_headers(claimed.id, int(time.time()), body, claimed.signing_secrets)
        timeout = self.settings.webhook_timeout_seconds
        started = time.monotonic()
        try:
            target = resolve(claimed.url, self.settings.webhook_allowed_networks, timeout)
            status, error = post(target, headers, body, started + timeout), None
        except Exception as failure:  # refused, unresolvable, refused connection, timeout, TLS: all the endpoint's
            status, error = None, (str(failure) or type(failure).__name__)[:MAX_ERROR_LENGTH]
        if status is not None and not _successful(status):
            error = f"answered HTTP {status}"
        return Outcome(status, error, int((time.monotonic() - started) * 1000))

    def _record(self, claimed: Claimed, outcome: Outcome) -> None:
        with self.sessions() as session:
            # The endpoint's row first, then the delivery's: the order a deleted endpoint's cascade
            # takes them in, so the two cannot deadlock. FOR NO KEY UPDATE, so a fan-out adding
            # deliveries to the endpoint meanwhile is not held up.
            endpoint_id = session.scalar(select(WebhookDelivery.endpoint_id).where(WebhookDelivery.id == claimed.id))
            endpoint = endpoint_id and session.get(WebhookEndpoint, endpoint_id, with_for_update={"key_share": True})
            delivery = endpoint and session.get(WebhookDelivery, claimed.id, with_for_update={"key_share": True})
            if delivery is None:
                return  # its endpoint was deleted meanwhile
            now = utcnow()
            # Compare-and-set on the locked row: the answer is ours to apply only while the delivery is
            # pending under the lease this attempt claimed. A late answer is still kept among the
            # attempts, marked: the receiver did get that post, and the log should say so.
            current = delivery.status == DeliveryStatus.PENDING and delivery.next_attempt_at == claimed.lease
            error = outcome.error if current else "; ".join(filter(None, (outcome.error, LATE)))
            session.add(
                WebhookAttempt(
                    delivery_id=delivery.id, attempted_at=now, status_code=outcome.status_code, error=error,
                    duration_ms=outcome.duration_ms,
                )  # fmt: skip
            )
            if not current:
                log.warning("webhook delivery %s: taken over during its attempt; that answer is not applied", delivery.id)
                session.commit()
                return
            delivery.attempt_count += 1
            delivery.last_status_code, delivery.last_error = outcome.status_code, outcome.error
            if outcome.delivered:
                delivery.status, delivery.delivered_at, delivery.next_attempt_at = DeliveryStatus.DELIVERED, now, None
                endpoint.consecutive_failures, endpoint.failing_since = 0, None
            else:
                self._schedule_retry(delivery, now)
                endpoint.consecutive_failures += 1
                endpoint.failing_since = endpoint.failing_since or now
                if endpoint.enabled and endpoint.consecutive_failures >= DISABLE_AFTER_FAILURES:
                    if endpoint.failing_since <= now - DISABLE_AFTER:
                        disable_failing(session, endpoint, now, outcome.error or "")
            session.commit()

    @staticmethod
    def _schedule_retry(delivery: WebhookDelivery, now: datetime) -> None:
        if delivery.attempt_count >= MAX_ATTEMPTS:
            delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED, None
            log.warning("webhook delivery %s failed for good after %d attempts", delivery.id, delivery.attempt_count)
        else:
            delivery.next_attempt_at = now + RETRY_DELAYS[delivery.attempt_count - 1]


def post(target: ResolvedTarget, headers: dict[str, str], body: bytes, deadline: float) -> int:
    """POST to the checked address (TLS still checks the certificate for the URL's host); the status,
    unless the whole exchange is not over by ``deadline`` (``time.monotonic()``): ``TimeoutError``.

    A socket timeout bounds each read, not the answer: a receiver sending a byte a second would hold
    the post forever. So a timer shuts the socket down at the deadline, which ends a read under way.
    No retries and no redirects here: the schedule retries, and a redirect is a target never checked.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no time left for the post after the DNS lookup")
    tls = {"server_hostname": target.host, "assert_hostname": target.host} if target.scheme == "https" else {}
    connection_class = urllib3.connection.HTTPSConnection if target.scheme == "https" else urllib3.connection.HTTPConnection
    connection = connection_class(target.address, target.port, timeout=remaining, **tls)
    expired = threading.Event()
    timer = threading.Timer(remaining, _cut, (connection, expired))
    timer.daemon = True
    timer.start()
    try:
        connection.connect()
        if expired.is_set():  # the deadline passed before there was a socket to shut down
            raise TimeoutError
        connection.request(
            "POST", target.path, body=body, headers={**headers, "Host": target.host_header, "User-Agent": USER_AGENT},
            preload_content=False,
        )  # fmt: skip
        return connection.getresponse().status
    except Exception:
        if expired.is_set():
            raise TimeoutError(f"no whole answer within {remaining:.1f} s: the connection was cut") from None
        raise
    finally:
        timer.cancel()
        connection.close()


def _cut(connection: urllib3.connection.HTTPConnection, expired: threading.Event) -> None:
    """At the deadline: shut the socket down (a blocked read returns at once), and say so."""
    expired.set()
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the post ended on its own


def disable_failing(session: Session, endpoint: WebhookEndpoint, now: datetime, last_error: str) -> None:
    """Disable an endpoint that only fails, and tell its owner: on its record, in the audit trail, in
    the log, and by a ``webhook.endpoint_disabled`` event to the owner's other enabled endpoints."""
    reason = (
        f"disabled after {endpoint.consecutive_failures} failed attempts in a row since "
        f"{endpoint.failing_since.isoformat()}; the last: {last_error}"
    )
    endpoint.enabled, endpoint.disabled_at, endpoint.disabled_reason = False, now, reason
    audit.record(session, audit.SYSTEM, "webhook.endpoint_disabled", endpoint.tenant_id, f"webhook {endpoint.id}", reason)
    # Only the URL's origin in the log: its path or query may carry the receiver's secret, as is advised.
    log.warning(
        "webhook endpoint %s (%s) disabled after %d failed attempts in a row",
        endpoint.id, origin(endpoint.url), endpoint.consecutive_failures,
    )  # fmt: skip
    data = {
        "endpoint_id": str(endpoint.id), "url": endpoint.url, "tenant_id": endpoint.tenant_id and str(endpoint.tenant_id),
        "reason": reason, "disabled_at": now.isoformat(),
    }  # fmt: skip
    key = f"endpoint_disabled:{endpoint.id}:{now.timestamp()}"
    add_deliveries(session.connection(), [Event(key, EventType.ENDPOINT_DISABLED, endpoint.tenant_id, now, data)])
