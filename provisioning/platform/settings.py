"""Every setting of the service, read from the environment in one place."""

from __future__ import annotations

import ipaddress
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import quote, urlsplit

from provisioning.jobs.workflows import VERIFY_BACKUP, driver_step_names
from provisioning.platform.identifiers import QUEUE_NAME
from provisioning.sites import credentials

DEFAULT_QUEUE_NAME = "erpmax.provisioning"
SITE_DRIVERS = ("simulated", "bench")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Where a reverse proxy usually runs: on the API's own machine.
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
RABBITMQ_PART_NAMES = ("rabbitmq_host", "rabbitmq_port", "rabbitmq_user", "rabbitmq_password", "rabbitmq_vhost")
# The steps SIMULATED_FAIL_STEP may name: the driver's, and the platform's verify_backup, which then
# fails for real on the dump the simulated driver cuts short.
SIMULATED_FAILABLE_STEPS = driver_step_names() | {VERIFY_BACKUP}
# Where `make run` keeps the SITE_CREDENTIALS_KEY it made, under DATA_DIR; see load_settings.
KEPT_CREDENTIALS_KEY_FILE = "site-credentials.key"


class SettingsError(ValueError):
    """A setting is malformed; the message starts with the variable's name."""


@dataclass(frozen=True)
class BenchSettings:
    """The bench driver's settings, as given: the driver checks them when a job's first step runs,
    so a missing or wrong one fails that job with a message naming it, not the worker at start.
    Empty strings stand for "not set"."""

    bench_path: str = ""
    executable: str = "bench"
    site_domain: str = ""
    db_root_username: str = "root"
    db_root_password: str = field(default="", repr=False)
    apps: str = "erpnext"
    step_timeout_seconds: str = "1200"
    archive_path: str = ""


@dataclass(frozen=True)
class Settings:
    """The service's configuration.

    With neither ``DATABASE_URL`` nor any ``RABBITMQ_*`` variable set, the service runs on
    its embedded defaults (a SQLite file and an in-process Redis emulation as broker) so it
    can be tried with nothing installed; those are for trying the service only.
    """

    database_url: str
    broker_url: str
    embedded: bool
    data_dir: Path
    provisioning_queue_name: str = DEFAULT_QUEUE_NAME
    embedded_broker_port: int = 6399
    simulated_step_seconds: float = 1.0
    simulated_fail_step: str | None = None
    task_soft_time_limit: int = 1500
    task_time_limit: int = 1620
    broker_connect_timeout: float = 2.0
    job_heartbeat_seconds: float = 10.0
    lost_job_after_seconds: float = 60.0
    sweep_interval_seconds: float = 30.0
    unclaimed_job_after_seconds: float = 300.0
    idempotency_key_hours: float = 24.0
    cancel_grace_seconds: float = 30.0
    simulated_ignore_cancel: bool = False
    site_driver: str = "simulated"
    bench: BenchSettings = field(default_factory=BenchSettings)
    # Fernet key that encrypts each site's admin password; never shown by repr.
    site_credentials_key: str | None = field(default=None, repr=False)
    # The file the key was read from (the one `make run` keeps), or None when it came from the environment.
    site_credentials_key_file: Path | None = None
    backup_path: Path = Path("var/backups")
    backup_keep_last: int = 7
    backup_max_age_days: float = 30.0
    backup_interval_hours: float = 24.0
    log_format: str = "auto"
    log_level: str = "INFO"
    # Bearer token that /metrics asks for from anywhere but loopback; None: loopback only.
    metrics_token: str | None = field(default=None, repr=False)
    # Reverse proxies in front of the API whose X-Forwarded-For is to be believed (0: none), and
    # the addresses they connect from: the header of any other peer is ignored.
    proxy_count: int = 0
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = LOOPBACK_NETWORKS
    # The ports the Procfile's web and flower lines listen on (they read PORT and FLOWER_PORT themselves).
    web_port: int = 8000
    flower_port: int = 5555

    @property
    def dead_letter_queue_name(self) -> str:
        return f"{self.provisioning_queue_name}.dead"

    @property
    def events_exchange_name(self) -> str:
        return f"{self.provisioning_queue_name}.events"

    @property
    def kept_credentials_key_path(self) -> Path:
        return self.data_dir / KEPT_CREDENTIALS_KEY_FILE


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from an environment mapping (``os.environ`` by default).

    Variable names are case-insensitive and unknown ones are ignored.

    Raises:
        SettingsError: a value is malformed; the message names the variable.
    """
    env = _lowercase_keys(os.environ if environ is None else environ)
    data_dir = Path(env.get("data_dir") or "var").resolve()
    database_url = env.get("database_url")
    rabbitmq_configured = bool(env.get("rabbitmq_url")) or any(env.get(name) for name in RABBITMQ_PART_NAMES)
    embedded = not database_url and not rabbitmq_configured
    embedded_broker_port = _port(env, "embedded_broker_port", 6399)

    if embedded:
        database_url = f"sqlite:///{data_dir / 'provisioning.sqlite3'}"
        broker_url = f"redis://127.0.0.1:{embedded_broker_port}/0"
    else:
        if not database_url:
            raise SettingsError("DATABASE_URL: required once RabbitMQ is configured (a postgresql:// URL)")
        schemes = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgres", "sqlite")
        _check_url("DATABASE_URL", database_url, schemes)
        database_url = _normalise_database_url(database_url)
        broker_url = get_rabbitmq_url(env)

    # soft limit < hard limit < RabbitMQ's consumer timeout, or the broker takes a running job's
    # message back and hands it out again while the job still runs.
    soft_limit = _positive_int(env, "task_soft_time_limit", 1500)
    hard_limit = _positive_int(env, "task_time_limit", 1620)
    consumer_timeout = _positive_int(env, "rabbitmq_consumer_timeout_seconds", 1800)
    if soft_limit >= hard_limit:
        raise SettingsError(f"TASK_SOFT_TIME_LIMIT: {soft_limit} must be below TASK_TIME_LIMIT ({hard_limit})")
    if hard_limit >= consumer_timeout:
        raise SettingsError(
            f"TASK_TIME_LIMIT: {hard_limit} must be below RabbitMQ's consumer timeout "
            f"(RABBITMQ_CONSUMER_TIMEOUT_SECONDS={consumer_timeout}; raise that only if the broker's is higher)"
        )

    cancel_grace = _positive_float(env, "cancel_grace_seconds", 30.0)
    if cancel_grace >= soft_limit:
        raise SettingsError(f"CANCEL_GRACE_SECONDS: {cancel_grace:g} must be below TASK_SOFT_TIME_LIMIT ({soft_limit})")
    heartbeat = _positive_float(env, "job_heartbeat_seconds", 10.0)
    lost_after = _positive_float(env, "lost_job_after_seconds", 60.0)
    if lost_after < 3 * heartbeat:
        raise SettingsError(
            f"LOST_JOB_AFTER_SECONDS: {lost_after:g} must be at least three heartbeats (JOB_HEARTBEAT_SECONDS={heartbeat:g})"
        )
    proxy_count = _non_negative_int(env, "proxy_count", 0)
    trusted_proxies = _networks(env, "trusted_proxies", LOOPBACK_NETWORKS)
    if env.get("trusted_proxies", "").strip() and not proxy_count:
        raise SettingsError("TRUSTED_PROXIES: set, but PROXY_COUNT is 0, so no X-Forwarded-For would be believed; set both")

    kept_key_file = data_dir / KEPT_CREDENTIALS_KEY_FILE if embedded else None
    credentials_key, credentials_key_file = _credentials_key(env, kept_key_file)
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        embedded=embedded,
        data_dir=data_dir,
        provisioning_queue_name=_queue_name(env),
        embedded_broker_port=embedded_broker_port,
        simulated_step_seconds=_non_negative_float(env, "simulated_step_seconds", 1.0),
        simulated_fail_step=_step_name(env),
        task_soft_time_limit=soft_limit,
        task_time_limit=hard_limit,
        broker_connect_timeout=_non_negative_float(env, "broker_connect_timeout", 2.0),
        job_heartbeat_seconds=heartbeat,
        lost_job_after_seconds=lost_after,
        sweep_interval_seconds=_positive_float(env, "sweep_interval_seconds", 30.0),
        unclaimed_job_after_seconds=_positive_float(env, "unclaimed_job_after_seconds", 300.0),
        idempotency_key_hours=_positive_float(env, "idempotency_key_hours", 24.0),
        cancel_grace_seconds=cancel_grace,
        simulated_ignore_cancel=_flag(env, "simulated_ignore_cancel"),
        site_driver=_one_of(env, "site_driver", SITE_DRIVERS, "simulated"),
        bench=BenchSettings(
            bench_path=env.get("bench_path", ""),
            executable=env.get("bench_executable") or "bench",
            site_domain=env.get("site_domain", ""),
            db_root_username=env.get("db_root_username") or "root",
            db_root_password=env.get("db_root_password", ""),
            apps=env.get("site_apps", "erpnext"),
            step_timeout_seconds=env.get("bench_step_timeout_seconds") or "1200",
            archive_path=env.get("bench_archive_path", ""),
        ),
        site_credentials_key=credentials_key,
        site_credentials_key_file=credentials_key_file,
        backup_path=Path(env.get("backup_path") or data_dir / "backups").resolve(),
        backup_keep_last=_positive_int(env, "backup_keep_last", 7),
        backup_max_age_days=_positive_float(env, "backup_max_age_days", 30.0),
        backup_interval_hours=_non_negative_float(env, "backup_interval_hours", 24.0),
        log_format=_one_of(env, "log_format", LOG_FORMATS, "auto"),
        log_level=_one_of(env, "log_level", LOG_LEVELS, "info").upper(),
        metrics_token=env.get("metrics_token") or None,
        proxy_count=proxy_count,
        trusted_proxies=trusted_proxies,
        web_port=_port(env, "port", 8000),
        flower_port=_port(env, "flower_port", 5555),
    )


def get_rabbitmq_url(environ: Mapping[str, str] | None = None) -> str:
    """The AMQP URL: ``RABBITMQ_URL`` when set, else one built from its parts.

    Raises:
        SettingsError: the URL has another scheme than amqp(s), or the port is not a number.
    """
    env = _lowercase_keys(os.environ if environ is None else environ)
    url = env.get("rabbitmq_url")
    if url:
        _check_url("RABBITMQ_URL", url, ("amqp", "amqps", "pyamqp"))
        return url
    host = env.get("rabbitmq_host") or "localhost"
    if ":" in host or "/" in host:
        raise SettingsError(f"RABBITMQ_HOST: {host!r} must be a host name alone (the port goes in RABBITMQ_PORT)")
    port = _port(env, "rabbitmq_port", 5672)
    user = quote(env.get("rabbitmq_user") or "guest", safe="")
    password = quote(env.get("rabbitmq_password") or "guest", safe="")
    vhost = quote(env.get("rabbitmq_vhost") or "/", safe="")
    return f"amqp://{user}:{password}@{host}:{port}/{vhost}"


def settings_or_exit(environ: Mapping[str, str] | None = None) -> Settings:
    """Load the settings, or stop the process with one line naming the bad variable."""
    try:
        return load_settings(environ)
    except SettingsError as error:
        sys.exit(f"configuration error: {error}")


def _lowercase_keys(environ: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value.strip() for key, value in environ.items()}


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise SettingsError(f"{name}: scheme {parts.scheme or '(none)'!r} is not one of {', '.join(schemes)}")
    try:
        parts.port
    except ValueError:
        raise SettingsError(f"{name}: the port in {parts.netloc.rpartition('@')[2]!r} is not a port number") from None


def _normalise_database_url(url: str) -> str:
    """Pin the psycopg2 driver we install, and accept the ``postgres://`` spelling of hosting providers."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def _queue_name(env: dict[str, str]) -> str:
    name = env.get("provisioning_queue_name") or DEFAULT_QUEUE_NAME
    if problem := QUEUE_NAME.problem("queue name", name):
        raise SettingsError(f"PROVISIONING_QUEUE_NAME: {problem}")
    return name


def _step_name(env: dict[str, str]) -> str | None:
    name = env.get("simulated_fail_step") or None
    if name is not None and name not in SIMULATED_FAILABLE_STEPS:
        steps = ", ".join(sorted(SIMULATED_FAILABLE_STEPS))
        raise SettingsError(f"SIMULATED_FAIL_STEP: {name!r} is no step the simulated driver can fail; they are {steps}")
    return name


def _one_of(env: dict[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = (env.get(name) or default).lower()
    if value not in choices:
        raise SettingsError(f"{name.upper()}: {value!r} is not one of {', '.join(choices)}")
    return value


def _credentials_key(env: dict[str, str], kept_file: Path | None) -> tuple[str | None, Path | None]:
    """SITE_CREDENTIALS_KEY, else the key `make run` keeps in ``kept_file`` (when it has made one),
    and the file it came from: every process of a quickstart on the embedded defaults, and
    `provisioning doctor` beside it, find the same key without being handed it. On PostgreSQL and
    RabbitMQ (``kept_file`` None) no demo key is ever picked up from a checkout: a deployment's
    key is the one it is given."""
    key = env.get("site_credentials_key") or None
    if key is not None:
        if not credentials.is_valid_key(key):
            raise SettingsError(
                "SITE_CREDENTIALS_KEY: not a Fernet key (32 url-safe base64 bytes); make one with `provisioning credentials-key`"
            )
        return key, None
    if kept_file is None:
        return None, None
    try:
        kept = kept_file.read_text().strip()
    except FileNotFoundError:
        return None, None
    except OSError as error:
        raise SettingsError(f"SITE_CREDENTIALS_KEY: cannot read the kept key {kept_file}: {error.strerror}") from None
    if not credentials.is_valid_key(kept):
        raise SettingsError(f"SITE_CREDENTIALS_KEY: {kept_file} holds no Fernet key; delete it and `make run` makes a new one")
    return kept, kept_file


def _port(env: dict[str, str], name: str, default: int) -> int:
    value = _positive_int(env, name, default)
    if value > 65535:
        raise SettingsError(f"{name.upper()}: {value} is not a port number (1..65535)")
    return value


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name.upper()}: {raw!r} is not a whole number") from None
    if value < 1:
        raise SettingsError(f"{name.upper()}: {value} must be at least 1")
    return value


def _non_negative_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    return 0 if raw == "0" else _positive_int(env, name, default)


def _networks(env: dict[str, str], name: str, default: tuple) -> tuple:
    """Addresses and networks (``10.0.0.5``, ``10.0.0.0/24``, ``fd00::/8``), separated by commas or spaces."""
    parts = env.get(name, "").replace(",", " ").split()
    if not parts:
        return default
    networks = []
    for part in parts:
        try:
            networks.append(ipaddress.ip_network(part))
        except ValueError:
            try:  # an address with a prefix (10.0.0.5/24): say which network was meant
                meant = ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise SettingsError(f"{name.upper()}: {part!r} is not an address or network (10.0.0.5, 10.0.0.0/24)") from None
            raise SettingsError(f"{name.upper()}: {part!r} has host bits set; the network is {meant}") from None
    return tuple(networks)


def _flag(env: dict[str, str], name: str) -> bool:
    raw = env.get(name, "").lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name.upper()}: {raw!r} is not one of true, false, 1, 0, yes, no, on, off")


def _positive_float(env: dict[str, str], name: str, default: float) -> float:
    value = _non_negative_float(env, name, default)
    if value == 0:
        raise SettingsError(f"{name.upper()}: must be more than 0")
    return value


def _non_negative_float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name.upper()}: {raw!r} is not a number") from None
    # float() also reads "nan" and "inf": nan passes every comparison below, and an infinite
    # period fails only later (timedelta(hours=inf) is an OverflowError in every job request).
    if not math.isfinite(value):
        raise SettingsError(f"{name.upper()}: {raw!r} is not a finite number")
    if value < 0:
        raise SettingsError(f"{name.upper()}: {value} must not be negative")
    return value
