"""The bare parts, for comparison: a Flask view that inserts a row and publishes a task the way
the project does, and a Celery no-op task with the project's reliability settings.

Run as ``gunicorn "benchmarks.baseline:create_app()"`` and ``celery -A benchmarks.baseline worker``;
both read DATABASE_URL, RABBITMQ_URL and PROVISIONING_QUEUE_NAME like the service.
"""

from __future__ import annotations

import os
import time
import uuid

from celery import Celery
from flask import Flask
from sqlalchemy import create_engine, text

import celeryconfig
from provisioning.platform.settings import settings_or_exit

NO_OP_TASK = "benchmarks.no_op"
TABLE = "baseline_jobs"
# The no-op task appends one line per run here (``<task id> <start time>``), so the benchmark can
# count what ran and when it started without a result backend.
STARTS_FILE = "BENCH_STARTS_FILE"

settings = settings_or_exit()
app = Celery("benchmarks")
jobs_queue, _dead_letters = celeryconfig.provisioning_queues(settings)
# The reliability settings the project runs with, and nothing of the project's own.
app.conf.update(
    broker_url=settings.broker_url,
    broker_transport_options={"confirm_publish": True},
    task_queues=(jobs_queue,),
    task_default_queue=settings.provisioning_queue_name,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
)


@app.task(name=NO_OP_TASK)
def no_op(job_id: str) -> None:
    line = f"{job_id} {time.time():.6f}\n".encode()
    descriptor = os.open(os.environ[STARTS_FILE], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def publish(celery_app: Celery, queue: str, job_id: str) -> None:
    """As the project's dispatcher publishes: by name, to the job queue, with its retry policy."""
    celery_app.send_task(
        NO_OP_TASK,
        kwargs={"job_id": job_id},
        queue=queue,
        retry=True,
        retry_policy=celeryconfig.PUBLISH_RETRY_POLICY,
        confirm_timeout=celeryconfig.PUBLISH_CONFIRM_TIMEOUT,
    )


def create_app() -> Flask:
    flask_app = Flask(__name__)
    # SQLAlchemy as anyone would set it up: psycopg2's own transactions, one round trip per
    # statement, BEGIN and COMMIT, as the service's engine does too.
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(
            text(f"CREATE TABLE IF NOT EXISTS {TABLE} (id uuid PRIMARY KEY, job_type text NOT NULL, created_at timestamptz)")
        )
    engine.dispose()  # gunicorn --preload forks after this: each worker must open connections of its own

    @flask_app.post("/jobs")
    def create_job():
        job_id = str(uuid.uuid4())
        with engine.begin() as connection:
            connection.execute(
                text(f"INSERT INTO {TABLE} (id, job_type, created_at) VALUES (:id, 'create_site', now())"), {"id": job_id}
            )
        publish(app, settings.provisioning_queue_name, job_id)
        return {"data": {"id": job_id}}, 201

    return flask_app
