"""The Celery configuration: built from the settings it is given, and nothing done at import."""

import os
import subprocess
import sys
from pathlib import Path

import celeryconfig
from provisioning.platform.settings import load_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POSTGRES = "postgresql://app@db.internal/provisioning"


def test_importing_celeryconfig_neither_reads_the_environment_nor_stops_the_process():
    """The API and the command line import it through the dispatcher: a variable only the
    worker reads must not stop them at import."""
    result = subprocess.run(
        [sys.executable, "-c", "import celeryconfig; print(sorted(name for name in vars(celeryconfig) if name.islower()))"],
        cwd=PROJECT_ROOT,
        env={"PATH": os.environ["PATH"], "RABBITMQ_PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert "broker_url" not in result.stdout and "task_acks_late" not in result.stdout, "no configuration at import"


def test_the_configuration_keeps_every_message_until_its_job_is_done_and_routes_jobs_to_the_queue_of_the_settings():
    settings = load_settings(
        {"PROVISIONING_QUEUE_NAME": "acme.provisioning", "RABBITMQ_URL": "amqp://u:p@mq:5672//", "DATABASE_URL": POSTGRES}
    )
    config = celeryconfig.build(settings)

    assert config["broker_url"] == "amqp://u:p@mq:5672//"
    # Acknowledged once the job's task returns, back in the queue if its process dies, one at a time.
    guarantees = ("task_acks_late", "task_reject_on_worker_lost", "worker_prefetch_multiplier")
    assert [config[name] for name in guarantees] == [True, True, 1]
    limits = [settings.task_soft_time_limit, settings.task_time_limit]
    assert [config["task_soft_time_limit"], config["task_time_limit"]] == limits
    [jobs] = config["task_queues"]
    assert jobs.name == config["task_default_queue"] == "acme.provisioning"
    assert config["task_routes"][celeryconfig.RUN_JOB_TASK] == {"queue": "acme.provisioning"}
    assert jobs.queue_arguments["x-dead-letter-routing-key"] == settings.dead_letter_queue_name
