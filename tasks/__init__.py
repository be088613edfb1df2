"""The Celery application: ``celery -A tasks worker`` runs provisioning jobs from the queue.

Loading it (as ``-A tasks`` does) reads this process's settings once, stopping the worker or
Flower with one line naming a bad one, and configures the app with ``celeryconfig.build`` of
them, as the API's dispatcher configures its own.
"""

import sys

from celery import Celery
from celery.signals import celeryd_init, setup_logging

import celeryconfig
from provisioning.platform import logs
from provisioning.platform.settings import settings_or_exit

SETTINGS = settings_or_exit()
app = Celery("provisioning")
app.conf.update(celeryconfig.build(SETTINGS))


ROLES = ("worker", "flower")


@celeryd_init.connect
@setup_logging.connect
def _log_our_way(**_kwargs) -> None:
    """With a receiver for setup_logging Celery leaves logging alone: its lines go out in our
    format too. A worker sends celeryd_init earlier, before its warning about running as root."""
    logs.configure(_role(), SETTINGS.log_format, SETTINGS.log_level)


def _role() -> str:
    return next((word for word in sys.argv if word in ROLES), "celery")


if _role() == "flower":
    # Flower sends neither signal; configured now, as its app is loaded, our handler is in place
    # before Tornado would add its own (it adds one only to a root logger that has none).
    _log_our_way()


import tasks.jobs  # noqa: E402,F401  (registers the tasks on the app)
