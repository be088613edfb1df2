"""Celery settings for the worker, Flower and the API's dispatcher, all read from the environment.

Time limits: a step is interrupted at ``TASK_SOFT_TIME_LIMIT`` (the job fails saying so), the
process is killed at ``TASK_TIME_LIMIT``, and both stay below RabbitMQ's consumer timeout
(30 minutes by default), which would otherwise close the channel and redeliver the message.
"""

from kombu import Queue

from provisioning.settings import Settings, settings_or_exit

RUN_JOB_TASK = "provisioning.run_job"


def provisioning_queues(settings: Settings) -> tuple[Queue, Queue]:
    """The job queue, which dead-letters rejected messages, and its dead-letter queue."""
    dead = Queue(settings.dead_letter_queue_name, routing_key=settings.dead_letter_queue_name, durable=True)
    jobs = Queue(
        settings.provisioning_queue_name,
        routing_key=settings.provisioning_queue_name,
        durable=True,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": settings.dead_letter_queue_name,
        },
    )
    return jobs, dead


def build(settings: Settings) -> dict:
    """The Celery configuration for ``settings``, as a mapping of Celery setting names."""
    jobs_queue, _dead = provisioning_queues(settings)
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker_connect_timeout,
        "broker_transport_options": {"confirm_publish": True, "max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        "task_queues": (jobs_queue,),
        "task_default_queue": settings.provisioning_queue_name,
        "task_routes": {RUN_JOB_TASK: {"queue": settings.provisioning_queue_name}},
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
    }


# Celery reads module attributes: expose the settings of this process's environment.
globals().update(build(settings_or_exit()))
