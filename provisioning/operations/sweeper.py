"""The sweeper: what makes "nothing lost" true after crashes, run by the ``sweeper`` process
(``run_sweeper``) and at worker start.

Two questions, both safe to ask from many processes at once because every answer is a
compare-and-set or a harmless duplicate message:

- Which running jobs lost their worker? Their heartbeat is older than the deadline: fail them,
  naming the worker and the step, and release the tenant.
- Which pending jobs were never published, or published long ago and never claimed? Publish
  them again, each to its server's queue; the claim lets only one delivery run a job. The jobs
  of a server that is down are held instead, and published by the first sweep after it is up.

It also forgets idempotency keys past their expiry and webhook deliveries past their keeping
(webhooks.retention), requests the scheduled backups and restore drills that are due and the
refills the standby pools need (see schedules), and prunes backups by the retention policy.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from provisioning.backups.book import BackupBook, retention_of
from provisioning.backups.offsite import OffsiteStore
from provisioning.jobs.records import Dispatch
from provisioning.jobs.repairs import JobRepairs
from provisioning.jobs.requests import JobRequests
from provisioning.messaging.broker import Dispatcher
from provisioning.messaging.events import EventRelay
from provisioning.operations.schedules import schedule_backups, schedule_drills, schedule_pool_refills
from provisioning.platform.db import UnitOfWork, session_factory
from provisioning.platform.settings import Settings
from provisioning.webhooks.retention import forget_old_deliveries
from provisioning.webhooks.runner import WebhookRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    reaped: list[uuid.UUID]
    held: list[uuid.UUID]
    republished: list[uuid.UUID]
    forgotten_keys: int
    forgotten_deliveries: int
    scheduled_backups: list[uuid.UUID]
    scheduled_drills: list[uuid.UUID]
    pool_refills: list[uuid.UUID]
    pruned_backups: list[uuid.UUID]
    stray_backup_directories: list[Path]


def sweep(settings: Settings, sessions: sessionmaker[Session], dispatch: Dispatch) -> SweepReport:
    """One sweep; each repair is a transaction of its own, committed before the next starts, so
    none holds the rows it touched while the others run."""
    with sessions() as session:
        uow = UnitOfWork(session)
        repairs = JobRepairs(uow, dispatch=dispatch)

        def committed(result):
            uow.commit()
            return result

        report = SweepReport(
            reaped=committed(repairs.reap_lost_jobs(timedelta(seconds=settings.lost_job_after_seconds))),
            held=committed(repairs.hold_jobs_of_down_servers()),
            republished=committed(repairs.republish_pending(timedelta(seconds=settings.unclaimed_job_after_seconds))),
            forgotten_keys=committed(repairs.prune_idempotency_keys()),
            forgotten_deliveries=committed(forget_old_deliveries(session)),
            scheduled_backups=(
                schedule_backups(JobRequests(uow, dispatch=dispatch), timedelta(hours=settings.backup_interval_hours))
                if settings.backup_interval_hours
                else []
            ),
            scheduled_drills=(
                schedule_drills(JobRequests(uow, dispatch=dispatch), timedelta(hours=settings.restore_drill_interval_hours))
                if settings.restore_drill_interval_hours
                else []
            ),
            pool_refills=schedule_pool_refills(JobRequests(uow, dispatch=dispatch)),
            pruned_backups=BackupBook(session).prune(retention_of(settings), offsite=OffsiteStore.from_settings(settings)),
            stray_backup_directories=BackupBook(session).remove_strays(settings.backup_path),
        )
    done = (
        report.reaped, report.held, report.republished, report.scheduled_backups, report.scheduled_drills, report.pool_refills
    )  # fmt: skip
    if any(done) or report.pruned_backups:
        log.info(
            "sweep: failed %d lost job(s), held %d job(s) of down servers, published %d pending job(s) again, "
            "forgot %d idempotency key(s) and %d webhook deliveries, "
            "requested %d scheduled backup(s), %d restore drill(s) and %d standby pool refill(s), pruned %d backup(s)",
            len(report.reaped),
            len(report.held),
            len(report.republished),
            report.forgotten_keys,
            report.forgotten_deliveries,
            len(report.scheduled_backups),
            len(report.scheduled_drills),
            len(report.pool_refills),
            len(report.pruned_backups),
        )
    return report


def run_sweeper(settings: Settings, stop: threading.Event) -> None:
    """The ``sweeper`` process (``provisioning sweeper``, one per deployment): a sweep at once and
    every ``SWEEP_INTERVAL_SECONDS`` after, and the job events' relay and the webhooks' fan-out and
    sender (``webhooks.runner``) in threads beside it, until
    ``stop`` is set (SIGTERM or Ctrl-C); a sweep under way finishes first.

    A process of its own, not periodic Celery tasks: a sweep sent to the job queue would wait for a
    free worker process behind long jobs (a lost job noticed only once some other job ends), and
    sweeps would pile up there while the workers are down; a queue of their own would take beat to
    send them and a consumer to run them, two processes for what this loop does. One sweeper runs,
    so one relay announces the events, in order.
    """
    sessions = session_factory(settings.database_url)
    dispatcher = Dispatcher(settings)
    relay = EventRelay(settings, sessions)
    relay.start()
    webhooks = WebhookRunner(settings, sessions)
    webhooks.start()
    log.info("sweeper: sweeping every %g s, relaying job events and sending webhooks", settings.sweep_interval_seconds)
    try:
        while not stop.is_set():
            try:
                sweep(settings, sessions, dispatcher.send_job)
            except Exception:
                log.exception("the sweep failed; the next one will try again")
            stop.wait(settings.sweep_interval_seconds)
    finally:
        webhooks.stop()
        relay.stop()
    log.info("sweeper: stopped")
