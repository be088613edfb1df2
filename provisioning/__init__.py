"""The provisioning core, in layers; a package imports only from the layers below it.

    operations   sweeper, scheduled backups, health checks, the quickstart
    jobs         the state machine, workflows, requests, execution, repairs, the runner
    messaging    the broker, the dead-letter queue, the job events relay
    webhooks     endpoints, the fan-out of events into deliveries, the signed sender
    backups      backup records, their checks and retention
    sites        the site drivers (simulated, bench), site admin passwords
    accounts     tenants, users, memberships, tokens, the audit trail
    models, enums, errors   the tables and the vocabulary every layer shares
    platform     settings, database, logs, migrations, quoting: nothing of the domain

``cli`` sits on top. Nothing here imports ``api`` or ``tasks``.
"""
