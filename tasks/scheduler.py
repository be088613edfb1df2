"""Beat's scheduler, except that the sweep runs in beat's own process instead of as a task; and
the relay of job events to other systems, in a thread of beat's.

As a task, a sweep would wait for a free worker process behind long jobs (so a lost job would
be noticed only when some other job ends), and sweeps would pile up in the job queue while the
workers are down. Exactly one beat runs, so one process sweeps at a time, and one relays.
"""

import logging
from pathlib import Path

from celery.beat import PersistentScheduler

import celeryconfig
from provisioning.messaging.broker import Dispatcher
from provisioning.messaging.events import EventRelay
from provisioning.operations.sweeper import sweep
from provisioning.platform.db import session_factory
from tasks.jobs import worker_settings

log = logging.getLogger(__name__)


class SweepingScheduler(PersistentScheduler):
    def setup_schedule(self):
        # The schedule file lives in DATA_DIR, which a fresh checkout does not have yet.
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()
        settings = worker_settings()
        self._relay = EventRelay(settings, session_factory(settings.database_url))
        self._relay.start()

    def close(self):
        self._relay.stop()
        super().close()

    def apply_entry(self, entry, producer=None):
        if entry.task != celeryconfig.SWEEP_TASK:
            return super().apply_entry(entry, producer)
        settings = worker_settings()
        try:
            sweep(settings, session_factory(settings.database_url), self._dispatcher(settings).send_job)
        except Exception:
            log.exception("the sweep failed; the next one will try again")

    def _dispatcher(self, settings) -> Dispatcher:
        if getattr(self, "_sweep_dispatcher", None) is None:
            self._sweep_dispatcher = Dispatcher(settings)
        return self._sweep_dispatcher
