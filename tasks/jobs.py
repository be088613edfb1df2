"""The job task: hand the job its message names to the provisioning runner (the consumer has
checked the message's shape), and the worker's start-up: settings warnings, queues, a sweep."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from functools import lru_cache

from celery.exceptions import Reject
from celery.signals import celeryd_init, worker_process_init, worker_ready
from sqlalchemy.exc import DBAPIError

import celeryconfig
from provisioning.errors import NotFound
from provisioning.jobs.runner import JobRunner
from provisioning.jobs.workflows import check_simulated_fail_step
from provisioning.messaging.broker import Dispatcher
from provisioning.messaging.dead_letters import reason_headers
from provisioning.models import ProvisioningJob
from provisioning.operations import health
from provisioning.operations.sweeper import sweep
from provisioning.platform import logs
from provisioning.platform.db import get_engine, is_connection_failure, session_factory
from provisioning.platform.settings import Settings, checked_or_exit
from provisioning.sites.drivers import make_driver
from tasks import SETTINGS, app

log = logging.getLogger(__name__)

MAX_DATABASE_RETRY_SECONDS = 60
WORKER_COLUMN_LENGTH = ProvisioningJob.__table__.c.worker.type.length
# Set in a prefork pool process (worker_process_init): there a SIGTERM fails the running job at its step.
IN_A_POOL_PROCESS = False


def worker_settings() -> Settings:
    """The settings the worker's Celery app was built from."""
    return SETTINGS


@celeryd_init.connect
def _check_settings(options: dict | None = None, **_kwargs) -> None:
    """A worker with a setting its jobs cannot use stops as it starts, with one line naming it;
    so does one told to take jobs (-Q) from a queue that is not its server's (SERVER_NAME)."""
    checked_or_exit(SETTINGS, [check_simulated_fail_step])
    queues = (options or {}).get("queues") or []
    named = sorted(set(queues.split(",") if isinstance(queues, str) else queues))
    if named and named != [SETTINGS.worker_queue_name]:
        sys.exit(
            f"configuration error: -Q {','.join(named)} is not the queue of server {SETTINGS.server_name} (SERVER_NAME), "
            f"which is {SETTINGS.worker_queue_name}; start it with -Q \"$(provisioning server queue)\""
        )


@lru_cache(maxsize=1)
def worker_dispatcher() -> Dispatcher:
    return Dispatcher(worker_settings())


@app.task(name=celeryconfig.RUN_JOB_TASK, bind=True, max_retries=None)
def run_job(self, job_id: str) -> None:
    """Run one provisioning job; the message carries nothing but ``{"job_id": "<uuid>"}``. A job
    of another server's tenant is sent to that server's queue, one of a server that is down is
    held (the runner's ``JobRouting``).

    The worker's consumer has checked the message's shape (``tasks.job_message``) before it got
    here. A job id that names no job can never succeed, so it goes to the dead-letter queue with
    the reason, instead of looping or vanishing. When the database cannot be reached, the
    message is not simply acknowledged (that would lose the job): the task is sent again with a
    growing delay until the database answers.
    """
    parsed_id = uuid.UUID(job_id)
    settings = worker_settings()
    runner = JobRunner.for_settings(
        settings,
        session_factory(settings.database_url),
        make_driver(settings),
        worker=worker_identity(self.request.hostname, os.getpid()),
        fails_its_job_on_sigterm=IN_A_POOL_PROCESS,
        dispatch=worker_dispatcher().send_job,
    )
    try:
        with logs.bound(request_id=self.request.get(celeryconfig.REQUEST_ID_HEADER), job_id=parsed_id):
            runner.run(parsed_id)
    except NotFound:
        return _dead_letter(self, f"job {parsed_id} does not exist")
    except DBAPIError as error:
        if not is_connection_failure(error):
            raise
        delay = database_retry_delay(self.request.retries)
        log.warning("job %s: database unavailable (%s); trying again in %ss", parsed_id, error.orig, delay)
        raise self.retry(countdown=delay) from None


def worker_identity(node_name: str, pid: int) -> str:
    """Who runs a job, as its row records it: the pool process, not just the worker (a restarted
    worker of the same name is another). A node name longer than the column allows (a long
    WORKER_NAME, or queue name in the default one) is cut: the claim would fail otherwise."""
    suffix = f" pid {pid}"
    return node_name[: WORKER_COLUMN_LENGTH - len(suffix)] + suffix


def database_retry_delay(retries: int) -> int:
    """Seconds until the next try: doubling from one, at most ``MAX_DATABASE_RETRY_SECONDS``.

    The exponent is capped first: ``retries`` comes from the message, and two to the power of a
    billion takes seconds to compute, to the power of a large AMQP integer longer than a task may run.
    """
    return min(MAX_DATABASE_RETRY_SECONDS, 2 ** min(retries, MAX_DATABASE_RETRY_SECONDS.bit_length()))


def _dead_letter(task, reason: str) -> None:
    """Put this task's message in the dead-letter queue with ``reason``; then it is acked.

    If the copy cannot be published, the message is rejected instead: the job queue's own
    dead-letter exchange then keeps it (without the reason), rather than an ack losing it.
    """
    settings = worker_settings()
    log.error("job message %s dead-lettered: %s", task.request.id, reason)
    try:
        task.app.send_task(
            task.name,
            args=task.request.args,
            kwargs=task.request.kwargs,
            task_id=task.request.id,
            queue=celeryconfig.queue_named(settings.dead_letter_queue_name, settings),
            headers=reason_headers(reason, settings),
            retry=True,
            retry_policy=celeryconfig.PUBLISH_RETRY_POLICY,
        )
    except Exception:
        log.exception("job message %s: the dead-letter copy failed; rejecting it instead", task.request.id)
        raise Reject(reason, requeue=False) from None


@worker_process_init.connect
def _prepare_pool_process(**_kwargs) -> None:
    """A forked pool process must not share the parent's database connections; and it runs jobs
    in a process of its own, where SIGTERM may fail the running job (see WorkerStop)."""
    global IN_A_POOL_PROCESS
    IN_A_POOL_PROCESS = True
    get_engine(worker_settings().database_url).dispose(close=False)


@worker_ready.connect
def _prepare_worker(sender, **_kwargs) -> None:
    """Say which settings the jobs need are missing, declare the queues (rejected messages need
    the dead-letter queue before any publish made it), then sweep once: a worker starting after
    a crash need not wait for the sweeper."""
    settings = worker_settings()
    for check in health.job_settings(settings):
        if not check.ok:
            # The worker runs on (other jobs do not need it), and each job that does fails at its first step.
            log.warning("%s: %s -> %s", check.name, check.detail, check.remedy)
    with sender.app.connection_for_write() as connection:
        celeryconfig.declare_queues(connection.default_channel, settings)
    try:
        sweep(settings, session_factory(settings.database_url), worker_dispatcher().send_job)
    except Exception:
        log.exception("the start-up sweep failed; the sweeper's next sweep will try again")
