"""Is the service able to work? The checks behind ``/readyz`` and ``provisioning doctor``.

Each check answers quickly (bounded by the database's and broker's connect timeouts), never
raises, and says what to do when it fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from kombu import Connection
from sqlalchemy import text
from sqlalchemy.engine import make_url

from provisioning.accounts.audit import SYSTEM
from provisioning.backups.offsite import OffsiteError, OffsiteStore, offsite_counts
from provisioning.backups.proofs import RestoreProofs
from provisioning.enums import ServerStatus
from provisioning.errors import StepFailed
from provisioning.messaging import events
from provisioning.messaging.broker import Dispatcher, queue_depths
from provisioning.platform import migrate
from provisioning.platform.db import get_engine, session_factory, utcnow
from provisioning.platform.quoting import first_line
from provisioning.platform.settings import Settings
from provisioning.servers.registry import ServerFigures, ServerRegistry
from provisioning.servers.standby import StandbyPool
from provisioning.sites.drivers.bench_config import BenchConfig
from provisioning.webhooks.figures import webhook_figures
from provisioning.webhooks.models import DeliveryStatus

START_POSTGRESQL = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
# The relay publishes within a second; an announcement waiting longer than this means it does not run.
EVENTS_LATE_AFTER_SECONDS = 60


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    remedy: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.name}: {self.detail}" + ("" if self.ok else f" -> {self.remedy}")


def readiness(settings: Settings, ahead_is_ok: bool = True) -> list[Check]:
    """What the API needs to take a job: the database, its schema, and the broker.

    The API serves a schema a later release migrated ahead of it (a rolling deploy): a load
    balancer must not take every old web process out of service meanwhile, so that is ready
    (``doctor`` says the code is older, ``ahead_is_ok=False``).
    """
    database = check_database(settings)
    if database.ok:
        migrations = check_migrations(settings, ahead_is_ok)
    else:
        migrations = Check("migrations", False, "not checked: the database is unreachable", "fix the database first")
    return [database, migrations, check_broker(settings)]


def job_settings(settings: Settings) -> list[Check]:
    """The settings a job needs that no process checks as it starts: a job that misses one fails
    at its first step (a worker logs these as it starts)."""
    return [check_site_driver(settings), check_credentials_key(settings)]


def doctor(settings: Settings) -> list[Check]:
    """Everything an operator should look at, in the order it depends on itself."""
    return [
        check_configuration(settings),
        *job_settings(settings),
        *readiness(settings, ahead_is_ok=False),
        check_servers(settings),
        check_standby_pools(settings),
        check_queues(settings),
        check_workers(settings),
        check_event_relay(settings),
        check_webhooks(settings),
        check_restore_proofs(settings),
        check_offsite(settings),
    ]


def check_configuration(settings: Settings) -> Check:
    mode = "embedded defaults (for trying only)" if settings.embedded else "PostgreSQL and RabbitMQ"
    return Check(
        "configuration", True, f"{mode}; database {_safe_url(settings.database_url)}, queue {settings.provisioning_queue_name}"
    )


def check_site_driver(settings: Settings) -> Check:
    """The bench settings as a job's first step would find them (read here, on this machine)."""
    if settings.site_driver == "simulated":
        return Check("site driver", True, f"simulated, {settings.simulated_step_seconds:g} s per step")
    try:
        config = BenchConfig.check(settings.bench, need_apps=True)
    except StepFailed as wrong:
        return Check("site driver", False, f"bench: {wrong}", "fix the setting it names, on every worker")
    return Check(
        "site driver",
        True,
        f"bench in {config.bench_path} running as {config.user.described}, sites <slug>.{config.site_domain}, "
        f"apps {', '.join(config.apps)}",
    )


def check_credentials_key(settings: Settings) -> Check:
    if settings.site_credentials_key_file:
        return Check("credentials key", True, f"the one make run keeps in {settings.site_credentials_key_file}")
    if settings.site_credentials_key:
        return Check("credentials key", True, "SITE_CREDENTIALS_KEY is set")
    return Check(
        "credentials key",
        False,
        "SITE_CREDENTIALS_KEY is not set: create_site jobs fail at their first step",
        "make one with `provisioning credentials-key` and give it to web and workers (make run keeps one in DATA_DIR)",
    )


def check_database(settings: Settings) -> Check:
    try:
        with get_engine(settings.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        reason = first_line(error)
        return Check("database", False, f"unreachable: {reason}", _database_remedy(settings.database_url, reason))
    return Check("database", True, f"reachable at {_safe_url(settings.database_url)}")


def _database_remedy(database_url: str, reason: str) -> str:
    """What to do about PostgreSQL's answer: a server that answers needs no starting."""
    url = make_url(database_url)
    if f'database "{url.database}" does not exist' in reason:
        user = f" -U {url.username}" if url.username else ""
        return f"create it: createdb -h {url.host or 'localhost'} -p {url.port or 5432}{user} {url.database}"
    if "password authentication failed" in reason or (url.username and f'role "{url.username}" does not exist' in reason):
        return "fix the user or password in DATABASE_URL"
    return f"start it ({START_POSTGRESQL}) or fix DATABASE_URL"


def check_migrations(settings: Settings, ahead_is_ok: bool = False) -> Check:
    try:
        with get_engine(settings.database_url).connect() as connection:
            state = migrate.schema_state(connection)
    except Exception as error:
        return Check("migrations", False, f"cannot read the schema revision: {first_line(error)}", "fix the database first")
    if state.ahead and ahead_is_ok:
        return Check("migrations", True, f"{state.describe()}: a later release's, which this code serves")
    if not state.at_head:
        # A revision the code does not know was made by a newer release: upgrading cannot help.
        remedy = f"run: {migrate.UPGRADE_COMMAND}"
        if state.ahead:
            remedy = "run the release whose migrations made it (this code is older)"
        return Check("migrations", False, state.describe(), remedy)
    return Check("migrations", True, f"at head ({state.head})")


def check_broker(settings: Settings) -> Check:
    try:
        with Connection(settings.broker_url, connect_timeout=settings.broker_connect_timeout) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5)
    except Exception as error:
        reason = first_line(error)
        return Check("broker", False, f"unreachable: {reason}", _broker_remedy(settings, reason))
    return Check("broker", True, f"reachable at {Connection(settings.broker_url).as_uri()}")


def _broker_remedy(settings: Settings, reason: str) -> str:
    """What to do about RabbitMQ's answer: one that refuses the vhost or the login is running."""
    if settings.embedded:
        return "start it with: provisioning embedded-broker (make run does)"
    url = Connection(settings.broker_url)
    if "NOT_ALLOWED" in reason and "vhost" in reason:
        return (
            f"create the vhost: rabbitmqctl add_vhost {url.virtual_host} && "
            f'rabbitmqctl set_permissions -p {url.virtual_host} {url.userid} ".*" ".*" ".*"'
        )
    if "ACCESS_REFUSED" in reason:
        return "fix the user or password in RABBITMQ_URL (rabbitmqctl list_users)"
    return "start it (rabbitmq-server -detached) or fix RABBITMQ_URL"


def server_figures(settings: Settings) -> list[ServerFigures]:
    """Every bench server's figures (``ServerRegistry.figures``).

    Raises:
        SQLAlchemy errors: the database cannot be read.
    """
    with session_factory(settings.database_url)() as session:
        return ServerRegistry(session, SYSTEM).figures()


def check_servers(settings: Settings) -> Check:
    """Servers that are down (their jobs are held) or full (they take no new site)."""
    try:
        servers = server_figures(settings)
    except Exception as error:
        return Check("servers", False, f"cannot read them: {first_line(error)}", "fix the database first")
    if not servers:
        return Check("servers", False, "none is registered: no site can be placed", "add one: provisioning server add NAME")
    down = [f"{server.name} ({server.pending_jobs} job(s) held)" for server in servers if server.status == ServerStatus.DOWN]
    usable = [server for server in servers if server.status == ServerStatus.ACTIVE]
    room = sum(max(server.capacity - server.site_count, 0) for server in usable)
    summary = f"{len(servers)} server(s), {len(usable)} active, room for {room} more site(s)"
    if down:
        return Check(
            "servers", False, f"{summary}; down: {', '.join(down)}",
            "bring each back and run: provisioning server activate NAME (its held jobs are sent then)",
        )  # fmt: skip
    if not room:
        return Check("servers", False, f"{summary}: a new site gets a 409", "add a server or raise a capacity")
    return Check("servers", True, summary)


def check_standby_pools(settings: Settings) -> Check:
    """Each pool's ready, making and to-drop sites and its claims of the last hour; a pool with no
    site ready and none being made is not being refilled: new tenants wait a minute for new-site."""
    try:
        with session_factory(settings.database_url)() as session:
            pools = [pool for pool in StandbyPool(session).figures() if pool.pool_size or pool.ready or pool.discarded]
    except Exception as error:
        return Check("standby pools", False, f"cannot read them: {first_line(error)}", "fix the database first")
    if not pools:
        return Check(
            "standby pools", True, "none: every new site is made with new-site (provisioning server update NAME --standby-pool N)"
        )
    summary = "; ".join(
        f"{pool.server}: {pool.ready}/{pool.pool_size} ready, {pool.making} making, {pool.discarded} to drop, "
        f"{pool.claimed_last_hour} claimed in the last hour"
        for pool in pools
    )
    empty = [pool.server for pool in pools if pool.active and pool.pool_size and not pool.ready and not pool.making]
    if empty:
        return Check(
            "standby pools", False, f"{summary}; not being refilled: {', '.join(empty)}",
            "the sweeper asks for refill_pool jobs and the server's worker runs them: check both, the server's room, "
            "and the pools' last jobs (provisioning jobs list --type refill_pool)",
        )  # fmt: skip
    return Check("standby pools", True, summary)


def check_queues(settings: Settings) -> Check:
    try:
        depths = queue_depths(settings, [server.name for server in server_figures(settings)])
    except Exception as error:
        return Check("queues", False, f"cannot read them: {first_line(error)}", "fix the broker and the database first")
    missing = [name for name, depth in depths.items() if depth is None]
    if missing:
        return Check("queues", False, f"not declared yet: {', '.join(missing)}", "start each server's worker (it declares them)")
    return Check("queues", True, ", ".join(f"{name}: {depth} waiting" for name, depth in depths.items()))


def check_workers(settings: Settings) -> Check:
    """The workers that consume each server's queue: others on the same broker (another
    deployment's, or one started with another -Q) answer too, but take none of our jobs. A server
    that is down is expected to have none."""
    try:
        answers = Dispatcher(settings).app.control.inspect(timeout=2.0).active_queues() or {}
        servers = [server.name for server in server_figures(settings) if server.status != ServerStatus.DOWN]
    except Exception as error:
        return Check("workers", False, f"cannot ask: {first_line(error)}", "fix the broker and the database first")
    consumers = {
        name: {consumed.get("name") for consumed in queues or ()} for name, queues in answers.items()
    }
    served = {
        server: sorted(worker for worker, queues in consumers.items() if settings.queue_of_server(server) in queues)
        for server in servers
    }
    ours = {worker for workers in served.values() for worker in workers}
    others = f"; {len(answers) - len(ours)} other(s) consume other queues" if len(answers) > len(ours) else ""
    unserved = [server for server, workers in served.items() if not workers]
    if unserved:
        return Check(
            "workers", False, f"no worker consumes the queue of server(s) {', '.join(unserved)} (asked for 2 s){others}",
            "start one on each: SERVER_NAME=<name> celery -A tasks worker -Q \"$(provisioning server queue)\"",
        )  # fmt: skip
    shown = "; ".join(f"{server}: {', '.join(workers)}" for server, workers in served.items())
    return Check("workers", True, f"{len(ours)} serve {len(served)} server(s): {shown}{others}")


def check_event_relay(settings: Settings) -> Check:
    try:
        with session_factory(settings.database_url)() as session:
            count, oldest = events.waiting(session)
    except Exception as error:
        return Check("job events", False, f"cannot read them: {first_line(error)}", "fix the database first")
    age = (utcnow() - oldest).total_seconds() if oldest else 0.0
    if age > EVENTS_LATE_AFTER_SECONDS:
        return Check(
            "job events", False, f"{count} wait to be announced, the oldest for {age:.0f} s",
            "start the sweeper (provisioning sweeper), which relays them, and check the broker",
        )  # fmt: skip
    return Check("job events", True, f"{count} wait to be announced" + (f", the oldest for {age:.1f} s" if count else ""))


def check_webhooks(settings: Settings) -> Check:
    """Deliveries that are due and not sent mean the sweeper's sender does not run (a receiver that
    fails is the receiver's business: its deliveries are retried, and are not due in between)."""
    try:
        with session_factory(settings.database_url)() as session:
            figures = webhook_figures(session)
    except Exception as error:
        return Check("webhooks", False, f"cannot read them: {first_line(error)}", "fix the database first")
    pending, failed = (figures.deliveries[status] for status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED))
    said = f"{pending} deliveries pending, {failed} failed, {figures.endpoints_disabled} endpoint(s) disabled"
    if figures.most_overdue_seconds > EVENTS_LATE_AFTER_SECONDS:
        late = f"{said}; one has been due for {figures.most_overdue_seconds:.0f} s"
        return Check("webhooks", False, late, "start the sweeper (provisioning sweeper), which sends them")
    return Check("webhooks", True, said)


def check_restore_proofs(settings: Settings) -> Check:
    """Backups whose last restore (a restore_site or a restore drill) failed: a backup that does not
    restore is no backup, and its tenant may not know."""
    try:
        with session_factory(settings.database_url)() as session:
            failing = RestoreProofs(session).disproven()
            proven = RestoreProofs(session).newest_proof()
    except Exception as error:
        return Check("restore drills", False, f"cannot read them: {first_line(error)}", "fix the database first")
    if failing:
        shown = "; ".join(f"{backup.site} backup {backup.id}: {first_line(backup.restore_error or '')[:160]}"
                          for backup in failing[:3])  # fmt: skip
        return Check(
            "restore drills", False, f"{len(failing)} backup(s) failed their last restore: {shown}",
            "read the failed job for why; take a new backup (backup_site); each stays listed until a restore_drill "
            "with its backup_id proves it or retention prunes it",
        )  # fmt: skip
    schedule = (
        f"every {settings.restore_drill_interval_hours:g} h" if settings.restore_drill_interval_hours
        else "off (RESTORE_DRILL_INTERVAL_HOURS=0)"
    )  # fmt: skip
    last = f"the last proof {proven:%Y-%m-%d %H:%M} UTC" if proven else "no backup proven yet"
    return Check("restore drills", True, f"{schedule}; no backup failed its last restore; {last}")


def check_offsite(settings: Settings) -> Check:
    """The offsite store answers (``head_bucket``), and how many backups have no offsite copy yet."""
    store = OffsiteStore.from_settings(settings)
    if store is None:
        return Check("offsite backups", True, "off: each backup is kept on the server that took it only (OFFSITE_S3_BUCKET)")
    try:
        answer = store.check()
    except OffsiteError as error:
        return Check(
            "offsite backups", False, str(error),
            "start the store or fix OFFSITE_S3_ENDPOINT_URL, OFFSITE_S3_BUCKET and the keys; backups fail at copy_offsite",
        )  # fmt: skip
    try:
        with session_factory(settings.database_url)() as session:
            _, missing, to_delete = offsite_counts(session)
    except Exception as error:
        return Check("offsite backups", False, f"{answer}; cannot read backups: {first_line(error)}", "fix the database first")
    return Check("offsite backups", True, f"{answer}; {missing} completed backup(s) without a copy, {to_delete} to delete")


def _safe_url(database_url: str) -> str:
    return make_url(database_url).render_as_string(hide_password=True)


