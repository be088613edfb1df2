"""The job task: parse the payload, then hand the job to the provisioning runner."""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache

from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_ready

import celeryconfig
from provisioning.db import get_engine, session_factory
from provisioning.drivers import make_driver
from provisioning.errors import NotFound
from provisioning.runner import JobRunner
from provisioning.settings import Settings, settings_or_exit
from tasks import app

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def worker_settings() -> Settings:
    return settings_or_exit()


@app.task(name=celeryconfig.RUN_JOB_TASK, bind=True)
def run_job(self, job_id: str) -> None:
    """Run one provisioning job; the message carries nothing but its id.

    A payload that names no job can never succeed, so it is rejected without requeue and
    lands in the dead-letter queue instead of looping.
    """
    try:
        parsed_id = uuid.UUID(str(job_id))
    except ValueError:
        raise Reject(f"job_id {job_id!r} is not a UUID", requeue=False) from None
    settings = worker_settings()
    runner = JobRunner(session_factory(settings.database_url), make_driver(settings), worker=self.request.hostname or "worker")
    try:
        runner.run(parsed_id)
    except NotFound:
        raise Reject(f"job {parsed_id} does not exist", requeue=False) from None


@worker_process_init.connect
def _fresh_database_pool(**_kwargs) -> None:
    """A forked pool process must not share the parent's database connections."""
    get_engine(worker_settings().database_url).dispose(close=False)


@worker_ready.connect
def _declare_queues(sender, **_kwargs) -> None:
    """Declare the dead-letter queue too, so rejected messages have somewhere to go."""
    with sender.app.connection_for_write() as connection:
        for queue in celeryconfig.provisioning_queues(worker_settings()):
            queue(connection.default_channel).declare()
