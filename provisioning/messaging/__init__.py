"""RabbitMQ as the service uses it: publishing job tasks by name, the dead-letter queue, and the
relay of job events to other systems. Imports the platform and the shared models."""
