"""PatientService: the service as a running job uses it, one transaction per call, riding out a
database outage."""

from __future__ import annotations

import functools
import logging

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_chain, wait_fixed

from provisioning.errors import ProvisioningError
from provisioning.jobs.records import JobRecords
from provisioning.platform.db import is_connection_failure

log = logging.getLogger(__name__)

DATABASE_RETRY_SECONDS = 1.0


def _lost_the_connection(error: BaseException) -> bool:
    return isinstance(error, DBAPIError) and is_connection_failure(error)


def _say_why(state: RetryCallState) -> None:
    """Before a call runs again: the first time it is likely a connection the server dropped."""
    call, error = state.fn.__name__, state.outcome.exception().orig
    if state.attempt_number == 1:
        log.info("database connection lost during %s (%s); running it again on a new one", call, error)
    else:
        log.warning("database unavailable during %s (%s); trying again", call, error)


class PatientService:
    """The service as a running job uses it: each call is one unit of work (the call, then the
    commit), and one that lost its database connection (a restarted PostgreSQL, a killed backend)
    runs again, whole, on a new connection for up to ``patience`` seconds instead of failing the
    job. ``patience=0`` gives one transaction per call and no second try.

    Every write the runner makes is safe to repeat: a commit whose answer was lost either
    happened (the compare-and-set then finds the job already moved) or did not. A refusal the
    service answers with (a ``ProvisioningError``: a claimed job its tenant no longer allows,
    failed for it) is decided, so what it wrote with it is committed before it is raised.
    """

    def __init__(self, service: JobRecords, patience: float):
        self.service = service
        self.retrying = Retrying(
            retry=retry_if_exception(_lost_the_connection),
            stop=stop_after_delay(patience),
            # A dead connection is usually one the server dropped while the database is up: the
            # first retry goes at once, on a new connection; then once a second.
            wait=wait_chain(wait_fixed(0), wait_fixed(DATABASE_RETRY_SECONDS)),
            before_sleep=_say_why,
            reraise=True,
        )

    @property
    def session(self) -> Session:
        return self.service.session

    def __getattr__(self, name: str):
        method = getattr(self.service, name)
        if not callable(method):  # an attribute (``uow``, ``dispatch``): as the service has it
            return method
        uow = self.service.uow

        @functools.wraps(method)  # its name, for ``_say_why``
        def once(*args, **kwargs):
            try:
                try:
                    result = method(*args, **kwargs)
                except ProvisioningError:
                    uow.commit()
                    raise
                uow.commit()
                return result
            except ProvisioningError:
                raise
            except BaseException:
                uow.rollback()
                raise

        def patiently(*args, **kwargs):
            return self.retrying(once, *args, **kwargs)

        return patiently
