"""``/metrics``: the service's figures in Prometheus's text format.

Two kinds of figures, read two ways:

- HTTP requests (count and latency by route and status) are counted by the process that served
  them. Under gunicorn (``gunicorn_config`` sets ``PROMETHEUS_MULTIPROC_DIR``) every worker
  writes its counts to files there, and a scrape, whichever worker answers it, adds them all up.
- Jobs (created, finished, their durations, how many wait or run, the queues' depths) and tenants by status are read
  from the database and the broker at scrape time: jobs finish on worker machines that no
  scrape of this process could see, and the job table is the truth about them.

Open from loopback only, unless ``METRICS_TOKEN`` is set: then a ``Bearer`` token is needed
from everywhere, loopback included (a reverse proxy on the same machine is loopback too).
"""

from __future__ import annotations

import hmac
import logging
import os
import time

from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from api.errors import http_error
from api.forwarded import parse_address
from api.session import require_current_schema
from provisioning.accounts.audit import SYSTEM
from provisioning.backups.offsite import offsite_counts
from provisioning.backups.proofs import RestoreProofs
from provisioning.enums import JobStatus, ServerStatus, TenantStatus
from provisioning.jobs.states import FINAL_STATUSES
from provisioning.messaging import events
from provisioning.messaging.broker import queue_depths
from provisioning.models import ACTIVE_JOB_STATUSES, ProvisioningJob, Tenant
from provisioning.platform.db import utcnow
from provisioning.platform.settings import Settings
from provisioning.servers.registry import ServerFigures, ServerRegistry
from provisioning.servers.standby import PoolFigures, StandbyPool
from provisioning.webhooks.figures import webhook_figures

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter("erpmax_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "erpmax_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED = Counter("erpmax_rate_limited_total", "Requests refused with 429, by the limit used up (api.limits)", ["limit"])
# A create takes minutes with bench, seconds when simulated.
JOB_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


def init_metrics(app: Flask) -> None:
    @app.before_request
    def start_clock() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count_request(response: Response) -> Response:
        # The route's pattern, not the path: one series per endpoint, not one per job id.
        route = request.url_rule.rule if request.url_rule else "unmatched"
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - g.get("metrics_started", time.perf_counter()))
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        _check_access(current_app.config["PROVISIONING_SETTINGS"])
        require_current_schema()
        registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(HTTP_REQUESTS)
            registry.register(HTTP_LATENCY)
            registry.register(RATE_LIMITED)
        registry.register(
            JobFigures(current_app.extensions["provisioning_sessions"], current_app.config["PROVISIONING_SETTINGS"])
        )
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def _check_access(settings: Settings) -> None:
    if settings.metrics_token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), settings.metrics_token.encode()):
            raise http_error(401, "/metrics needs the METRICS_TOKEN as a bearer token", {"WWW-Authenticate": "Bearer"})
    elif not ((address := parse_address(request.remote_addr)) and address.is_loopback):
        raise http_error(403, "/metrics answers loopback only; set METRICS_TOKEN to scrape it from elsewhere")


class JobFigures:
    """A collector that asks the database and the broker at each scrape."""

    def __init__(self, sessions, settings: Settings):
        self.sessions = sessions
        self.settings = settings

    def collect(self):
        with self.sessions() as session:
            yield from self._job_counts(session)
            yield from self._job_durations(session)
            yield from self._active_jobs(session)
            yield from self._tenants(session)
            yield from self._waiting_events(session)
            yield from self._restore_proofs(session)
            yield from self._offsite_copies(session)
            yield from self._webhooks(session)
            servers = ServerRegistry(session, SYSTEM).figures()
            pools = StandbyPool(session).figures()
        yield from self._servers(servers)
        yield from self._standby_pools(pools)
        yield from self._queue_depths([server.name for server in servers])

    def _job_counts(self, session: Session):
        created = CounterMetricFamily("erpmax_jobs_created", "Jobs requested, by type", labels=["job_type"])
        finished = CounterMetricFamily(
            "erpmax_jobs_finished", "Jobs that ended, by type and final status", labels=["job_type", "status"]
        )
        rows = session.execute(
            select(ProvisioningJob.job_type, ProvisioningJob.status, func.count()).group_by(
                ProvisioningJob.job_type, ProvisioningJob.status
            )
        ).all()
        by_type: dict[str, int] = {}
        for job_type, status, count in rows:
            by_type[job_type.value] = by_type.get(job_type.value, 0) + count
            if status in FINAL_STATUSES:
                finished.add_metric([job_type.value, status.value], count)
        for job_type, count in sorted(by_type.items()):
            created.add_metric([job_type], count)
        yield created
        yield finished

    def _job_durations(self, session: Session):
        family = HistogramMetricFamily(
            "erpmax_job_duration_seconds", "From start to end of finished jobs, by type", labels=["job_type"]
        )
        seconds = _seconds_between(session, ProvisioningJob.started_at, ProvisioningJob.completed_at)
        columns = [func.count(), func.coalesce(func.sum(seconds), 0)]
        columns += [func.sum(case((seconds <= bound, 1), else_=0)) for bound in JOB_DURATION_BUCKETS]
        rows = session.execute(
            select(ProvisioningJob.job_type, *columns)
            .where(ProvisioningJob.status.in_(FINAL_STATUSES), ProvisioningJob.started_at.is_not(None))
            .group_by(ProvisioningJob.job_type)
        ).all()
        for job_type, count, total, *within in rows:
            buckets = [(str(bound), int(n or 0)) for bound, n in zip(JOB_DURATION_BUCKETS, within)] + [("+Inf", count)]
            family.add_metric([job_type.value], buckets, float(total))
        yield family

    def _active_jobs(self, session: Session):
        active = GaugeMetricFamily("erpmax_jobs_active", "Jobs waiting or running now, by status", labels=["status"])
        counts = dict(
            session.execute(
                select(ProvisioningJob.status, func.count())
                .where(ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES))
                .group_by(ProvisioningJob.status)
            ).all()
        )
        for status in ACTIVE_JOB_STATUSES:
            active.add_metric([status.value], counts.get(status, 0))
        yield active
        oldest = session.scalar(select(func.min(ProvisioningJob.created_at)).where(ProvisioningJob.status == JobStatus.PENDING))
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily("erpmax_oldest_pending_job_age_seconds", "How long the oldest pending job has waited", value=age)

    @staticmethod
    def _tenants(session: Session):
        """Tenants by status, each status a series even at 0: billing watches ``suspended``, an
        operator ``half_suspended`` and ``failed``; the holders of standby pools count as ``pool``."""
        family = GaugeMetricFamily("erpmax_tenants", "Tenants by status", labels=["status"])
        counts = dict(session.execute(select(Tenant.status, func.count()).group_by(Tenant.status)).all())
        for status in TenantStatus:
            family.add_metric([status.value], counts.get(status, 0))
        yield family

    def _waiting_events(self, session: Session):
        count, oldest = events.waiting(session)
        yield GaugeMetricFamily("erpmax_job_events_waiting", "Status changes not yet announced to other systems", value=count)
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily(
            "erpmax_oldest_waiting_job_event_age_seconds", "How long the oldest of them has waited for the relay", value=age
        )

    @staticmethod
    def _webhooks(session: Session):
        figures = webhook_figures(session)
        deliveries = GaugeMetricFamily("erpmax_webhook_deliveries", "Webhook deliveries, by status", labels=["status"])
        for status, count in figures.deliveries.items():
            deliveries.add_metric([status.value], count)
        yield deliveries
        yield GaugeMetricFamily(
            "erpmax_webhook_endpoints_disabled", "Webhook endpoints disabled (for their failures or by hand)",
            value=figures.endpoints_disabled,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "erpmax_webhook_most_overdue_delivery_seconds", "How long the most overdue webhook delivery has been due",
            value=figures.most_overdue_seconds,
        )  # fmt: skip

    def _restore_proofs(self, session: Session):
        proven, failing = RestoreProofs(session).counts()
        yield GaugeMetricFamily(
            "erpmax_backups_proven", "Completed backups proven to restore by a restore or a restore drill", value=proven
        )
        yield GaugeMetricFamily(
            "erpmax_backups_failing_restore", "Completed backups whose last restore or restore drill failed", value=failing
        )

    @staticmethod
    def _servers(servers: list[ServerFigures]):
        """Per bench server: its sites and capacity, its tenants' jobs, and its status (1 on the
        series of the status it has)."""
        families = {
            "sites": GaugeMetricFamily(
                "erpmax_server_sites",
                "Sites that take room on the server: its tenants', and unclaimed standby sites",
                labels=["server"],
            ),
            "capacity": GaugeMetricFamily("erpmax_server_capacity", "Most sites the server takes", labels=["server"]),
            "active": GaugeMetricFamily(
                "erpmax_server_active_jobs", "Pending, running or cancelling jobs of the server's tenants", labels=["server"]
            ),
            "pending": GaugeMetricFamily(
                "erpmax_server_pending_jobs", "Jobs of the server's tenants waiting (held, if it is down)", labels=["server"]
            ),
        }
        status = GaugeMetricFamily(
            "erpmax_server_status", "The server's status: 1 on the one it has", labels=["server", "status"]
        )
        for server in servers:
            families["sites"].add_metric([server.name], server.site_count)
            families["capacity"].add_metric([server.name], server.capacity)
            families["active"].add_metric([server.name], server.active_jobs)
            families["pending"].add_metric([server.name], server.pending_jobs)
            for each in ServerStatus:
                status.add_metric([server.name, each.value], int(each == server.status))
        yield from families.values()
        yield status

    @staticmethod
    def _standby_pools(pools: list[PoolFigures]):
        """Per server: its standby sites ready, being made and waiting to be dropped, the pool's
        size, and the claims of the last hour (how fast new tenants use the pool up)."""
        sites = GaugeMetricFamily(
            "erpmax_standby_sites",
            "Standby sites by status: ready, making, discarded (to be dropped)",
            labels=["server", "status"],
        )
        size = GaugeMetricFamily("erpmax_standby_pool_size", "Ready standby sites the server keeps", labels=["server"])
        claims = GaugeMetricFamily(
            "erpmax_standby_claims_last_hour", "Standby sites claimed by new tenants in the last hour", labels=["server"]
        )
        for pool in pools:
            for status, count in (("ready", pool.ready), ("making", pool.making), ("discarded", pool.discarded)):
                sites.add_metric([pool.server, status], count)
            size.add_metric([pool.server], pool.pool_size)
            claims.add_metric([pool.server], pool.claimed_last_hour)
        yield from (sites, size, claims)

    def _offsite_copies(self, session: Session):
        copied, missing, to_delete = offsite_counts(session)
        yield GaugeMetricFamily("erpmax_backups_offsite", "Completed backups with a checked offsite copy", value=copied)
        yield GaugeMetricFamily(
            "erpmax_backups_offsite_missing", "Completed backups without an offsite copy (all, when it is off)", value=missing
        )
        yield GaugeMetricFamily(
            "erpmax_backups_offsite_to_delete", "Unkept backups whose offsite objects wait to be deleted", value=to_delete
        )

    def _queue_depths(self, server_names: list[str]):
        depths = GaugeMetricFamily(
            "erpmax_queue_messages", "Messages waiting in each server's job queue and the dead-letter queue", labels=["queue"]
        )
        up = 1
        try:
            for name, depth in queue_depths(self.settings, server_names).items():
                # A queue not declared yet (no worker has started, no job was sent) holds nothing.
                depths.add_metric([name], depth or 0)
        except Exception as error:
            log.warning("metrics: cannot read the queue depths: %s", error)
            up = 0
        yield depths
        yield GaugeMetricFamily("erpmax_broker_up", "Whether the broker answered this scrape", value=up)


def _seconds_between(session: Session, start, end):
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)
