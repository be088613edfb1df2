"""The Celery application: ``celery -A tasks worker`` runs provisioning jobs from the queue."""

from celery import Celery

app = Celery("provisioning")
app.config_from_object("celeryconfig")

import tasks.jobs  # noqa: E402,F401  (registers the tasks on the app)
