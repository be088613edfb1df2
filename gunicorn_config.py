"""Gunicorn's settings beyond its command line (``-c python:gunicorn_config``): our log format
for gunicorn's own lines, and a directory where every worker writes its Prometheus counts.

This module is read by gunicorn's master before the app is imported, which is what the
multiprocess mode of prometheus-client needs; the directory is new at each start, so no count of
an earlier run is added in, and a worker that exits has its live gauges dropped.
"""

import os
import shutil
import tempfile

from gunicorn.glogging import Logger

from provisioning.platform import logs
from provisioning.platform.settings import settings_or_exit

_made_metrics_dir = None
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _made_metrics_dir = tempfile.mkdtemp(prefix="erpmax-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _made_metrics_dir


class GunicornLogger(Logger):
    """Gunicorn's error and access logs, sent through the one handler every process uses."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        settings = settings_or_exit()
        logs.configure("web", settings.log_format, settings.log_level)
        for logger in (self.error_log, self.access_log):
            logger.handlers.clear()
            logger.propagate = True


logger_class = GunicornLogger


def on_exit(_server) -> None:
    """The master's exit only (an atexit handler would also run in each worker that exits, and
    take the directory from under the others)."""
    if _made_metrics_dir:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)


def child_exit(_server, worker) -> None:
    # Imported here, not above: prometheus-client must first see PROMETHEUS_MULTIPROC_DIR.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
