"""Celery settings for the worker, Flower and the API's dispatcher: ``build(settings)`` makes them
from the process's ``Settings``; importing this module reads nothing and configures nothing.

Time limits: a job's task is interrupted at ``TASK_SOFT_TIME_LIMIT`` (the job fails, saying
so), its process is killed at ``TASK_TIME_LIMIT``, and both stay below RabbitMQ's consumer
timeout (30 minutes by default), which would otherwise close the channel and redeliver the
message while the job still runs.
"""

from kombu import Exchange, Queue

from provisioning.platform.settings import Settings

RUN_JOB_TASK = "provisioning.run_job"
# The message header that carries the id of the HTTP request that asked for the job.
REQUEST_ID_HEADER = "request_id"
# A publish to a broker that is down fails in about a second instead of hanging the caller.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
# A broker that takes messages but never confirms them (a memory or disk alarm) must not hang a
# request either: past this, the publish fails and the sweeper sends the job later.
PUBLISH_CONFIRM_TIMEOUT = 5.0


def job_queue(name: str, settings: Settings) -> Queue:
    """A bench server's job queue (``Settings.queue_of_server``), which dead-letters rejected
    messages into the deployment's one dead-letter queue."""
    return Queue(
        name,
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": settings.dead_letter_queue_name,
        },
    )


def provisioning_queues(settings: Settings) -> tuple[Queue, Queue]:
    """This process's server's job queue (SERVER_NAME; PROVISIONING_QUEUE_NAME for the default
    server) and the dead-letter queue."""
    dead = Queue(settings.dead_letter_queue_name, routing_key=settings.dead_letter_queue_name, durable=True)
    return job_queue(settings.worker_queue_name, settings), dead


def is_job_queue(name: str, settings: Settings) -> bool:
    """Whether ``name`` is the job queue of a server of this deployment, whether it exists or not."""
    default = settings.provisioning_queue_name
    return name == default or (name.startswith(f"{default}.server.") and name.count(".") == default.count(".") + 2)


def queue_named(name: str, settings: Settings) -> Queue:
    """Our queues as they are declared (RabbitMQ refuses a redeclaration with other arguments);
    any other name is a plain durable queue."""
    if is_job_queue(name, settings):
        return job_queue(name, settings)
    if name == settings.dead_letter_queue_name:
        return provisioning_queues(settings)[1]
    return Queue(name, routing_key=name, durable=True)


def events_exchange(settings: Settings) -> Exchange:
    """Where job events are announced (see ``provisioning.messaging.events``): a durable topic exchange
    named after the job queue, so deployments sharing a broker announce apart."""
    return Exchange(settings.events_exchange_name, type="topic", durable=True)


def declare_queues(channel, settings: Settings) -> None:
    """Declare the queues and the events exchange: before the first job or event, so no message
    is dropped for want of a queue, and another system can bind to the exchange before the sweeper
    first announces anything."""
    for queue in provisioning_queues(settings):
        queue(channel).declare()
    events_exchange(settings)(channel).declare()


def build(settings: Settings) -> dict:
    """The Celery configuration for ``settings``, as a mapping of Celery setting names."""
    jobs_queue, _dead = provisioning_queues(settings)
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker_connect_timeout,
        # Publisher confirms: a publish returns only once RabbitMQ has taken the message.
        "broker_transport_options": {"confirm_publish": True},
        "task_queues": (jobs_queue,),
        "task_default_queue": settings.worker_queue_name,
        "task_routes": {RUN_JOB_TASK: {"queue": settings.worker_queue_name}},
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # Acknowledge a job's message only once the task returns, and give it back to the queue
        # when the process running it dies; each process reserves one job at a time.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        # Task events (received, started, succeeded) are off until a monitor asks for them: Flower
        # turns them on in every worker within 5 s of its start, and every 5 s after for workers
        # that start later (its enable_events). Nobody pays for them while no monitor listens:
        # they were an eighth of a job's cost.
        "worker_send_task_events": False,
        "worker_consumer": "tasks.consumer:DeadLetteringConsumer",
        "worker_hijack_root_logger": False,
    }
