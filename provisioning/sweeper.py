"""The sweeper: what makes "nothing lost" true after crashes, run by beat and at worker start.

Two questions, both safe to ask from many processes at once because every answer is a
compare-and-set or a harmless duplicate message:

- Which running jobs lost their worker? Their heartbeat is older than the deadline: fail them,
  naming the worker and the step, and release the tenant.
- Which pending jobs were never published, or published long ago and never claimed? Publish
  them again; the claim lets only one delivery run a job.

It also forgets idempotency keys past their expiry.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from provisioning.events import publisher_for
from provisioning.service import Dispatch, ProvisioningService
from provisioning.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    reaped: list[uuid.UUID]
    republished: list[uuid.UUID]
    forgotten_keys: int


def sweep(settings: Settings, sessions: sessionmaker[Session], dispatch: Dispatch) -> SweepReport:
    with sessions() as session:
        service = ProvisioningService(session, dispatch=dispatch, announce=publisher_for(settings).announce)
        report = SweepReport(
            reaped=service.reap_lost_jobs(timedelta(seconds=settings.lost_job_after_seconds)),
            republished=service.republish_pending(timedelta(seconds=settings.unclaimed_job_after_seconds)),
            forgotten_keys=service.prune_idempotency_keys(),
        )
    if report.reaped or report.republished:
        log.info(
            "sweep: failed %d lost job(s), published %d pending job(s) again, forgot %d idempotency key(s)",
            len(report.reaped),
            len(report.republished),
            report.forgotten_keys,
        )
    return report
