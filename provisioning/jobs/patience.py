"""PatientService: the service as a running job uses it, riding out a database outage."""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from provisioning.jobs.service import ProvisioningService
from provisioning.platform.db import is_connection_failure

log = logging.getLogger(__name__)

DATABASE_RETRY_SECONDS = 1.0


class PatientService:
    """The service as a running job uses it: a lost database connection is tried again for up to
    ``patience`` seconds (a restarted PostgreSQL, a killed backend) instead of failing the job.

    Every write the runner makes is safe to repeat: a commit whose answer was lost either
    happened (the compare-and-set then finds the job already moved) or did not.
    """

    def __init__(self, service: ProvisioningService, patience: float):
        self.service = service
        self.patience = patience

    @property
    def session(self) -> Session:
        return self.service.session

    def __getattr__(self, name: str):
        method = getattr(self.service, name)

        def patiently(*args, **kwargs):
            deadline = time.monotonic() + self.patience
            while True:
                try:
                    return method(*args, **kwargs)
                except DBAPIError as error:
                    self.service.session.rollback()
                    if not is_connection_failure(error) or time.monotonic() >= deadline:
                        raise
                    log.warning("database unavailable during %s (%s); trying again", name, error.orig)
                    time.sleep(DATABASE_RETRY_SECONDS)

        return patiently
