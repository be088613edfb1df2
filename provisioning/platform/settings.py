"""Every setting of the service, read from the environment in one place (pydantic-settings).

Each field is named after its variable; names are case-insensitive, values are stripped, empty
ones count as unset and unknown ones are ignored. A bad value stops a process with one line that
starts with the variable's name: ``SettingsError`` carries it, ``settings_or_exit`` prints it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal, Mapping, TypeVar
from urllib.parse import quote

from cryptography.fernet import Fernet
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from provisioning.platform.identifiers import QUEUE_NAME, SLUG
from provisioning.platform.setting_problems import first_problem
from provisioning.platform.setting_types import (
    HttpURL,
    LimitStorageURL,
    Lowercase,
    Networks,
    NonNegativeFloat,
    Port,
    PositiveFloat,
    PositiveInt,
    RateLimit,
    checked_url,
)

DEFAULT_QUEUE_NAME = "erpmax.provisioning"
# The server a deployment of one bench server has (migration 0012 makes it): its queue is
# PROVISIONING_QUEUE_NAME itself, and a worker with no SERVER_NAME works for it.
DEFAULT_SERVER_NAME = "default"
DEFAULT_DATA_DIR = "var"
# Where a reverse proxy usually runs: on the API's own machine.
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Where `make run` keeps the SITE_CREDENTIALS_KEY it made, under DATA_DIR; see _kept_key.
KEPT_CREDENTIALS_KEY_FILE = "site-credentials.key"
DATABASE_SCHEMES = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgres", "sqlite")
# The PostgreSQL driver installed (psycopg 3), whichever spelling a URL uses.
POSTGRESQL_DRIVER = "postgresql+psycopg://"
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
NOT_A_FERNET_KEY = "not a Fernet key (32 url-safe base64 bytes); make one with `provisioning credentials-key`"

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


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source on a given mapping (``os.environ`` unless a caller,
    a test say, hands its own), each value stripped, empty ones left out as unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self.environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str]:
        return {name.lower(): str(value).strip() for name, value in self.environ.items() if str(value).strip()}


class RabbitMQSettings(BaseSettings):
    """The broker: ``RABBITMQ_URL`` when set, else the parts an AMQP URL is built from."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    rabbitmq_url: str = Field("", repr=False)
    rabbitmq_host: str = "localhost"
    rabbitmq_port: Port = 5672
    rabbitmq_user: str = "guest"
    rabbitmq_password: str = Field("guest", repr=False)
    rabbitmq_vhost: str = "/"

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_scheme(cls, url: str) -> str:
        return checked_url(url, AMQP_SCHEMES) if url else url

    @field_validator("rabbitmq_host")
    @classmethod
    def _host_alone(cls, host: str) -> str:
        if ":" in host or "/" in host:
            raise ValueError(f"{host!r} must be a host name alone (the port goes in RABBITMQ_PORT)")
        return host

    @property
    def amqp_url(self) -> str:
        if self.rabbitmq_url:
            return self.rabbitmq_url
        parts = (self.rabbitmq_user, self.rabbitmq_password, self.rabbitmq_vhost)
        user, password, vhost = (quote(part, safe="") for part in parts)
        return f"amqp://{user}:{password}@{self.rabbitmq_host}:{self.rabbitmq_port}/{vhost}"


class Settings(RabbitMQSettings):
    """The service's configuration.

    With neither ``DATABASE_URL`` nor any ``RABBITMQ_*`` variable set, the service runs on
    its embedded defaults (a SQLite file and an in-process Redis emulation as broker) so it
    can be tried with nothing installed; those are for trying the service only.
    """

    # DATA_DIR resolved; whether the embedded defaults apply, and the URLs, follow from what is set
    # (see _embedded_unless_configured): EMBEDDED and BROKER_URL are never read.
    data_dir: Path
    embedded: bool
    database_url: str
    broker_url: str
    provisioning_queue_name: str = DEFAULT_QUEUE_NAME
    # The bench server this process's worker works for (see queue_of_server).
    server_name: Annotated[str, Lowercase] = DEFAULT_SERVER_NAME
    embedded_broker_port: Port = 6399
    simulated_step_seconds: NonNegativeFloat = 1.0
    # Which steps it may name is the worker's check as it starts (jobs.workflows knows the steps).
    simulated_fail_step: str | None = None
    task_soft_time_limit: PositiveInt = 1500
    task_time_limit: PositiveInt = 1620
    rabbitmq_consumer_timeout_seconds: PositiveInt = 1800
    broker_connect_timeout: NonNegativeFloat = 2.0
    job_heartbeat_seconds: PositiveFloat = 10.0
    lost_job_after_seconds: PositiveFloat = 60.0
    sweep_interval_seconds: PositiveFloat = 30.0
    unclaimed_job_after_seconds: PositiveFloat = 300.0
    idempotency_key_hours: PositiveFloat = 24.0
    cancel_grace_seconds: PositiveFloat = 30.0
    simulated_ignore_cancel: bool = False
    site_driver: Annotated[Literal["simulated", "bench"], Lowercase] = "simulated"
    # The bench driver's, handed to it as one BenchSettings (``bench``).
    bench_path: str = ""
    bench_executable: str = "bench"
    site_domain: str = ""
    db_root_username: str = "root"
    db_root_password: str = Field("", repr=False)
    site_apps: str = "erpnext"
    bench_step_timeout_seconds: str = "1200"
    bench_archive_path: str = ""
    # The file the key was read from (the one `make run` keeps), or None when it came from the
    # environment; never read as such.
    site_credentials_key_file: Path | None = None
    # Fernet key that encrypts each site's admin password; never shown by repr.
    site_credentials_key: str | None = Field(None, repr=False)
    backup_path: Path = Field(None, validate_default=True)  # unset: DATA_DIR/backups
    backup_keep_last: PositiveInt = 7
    backup_max_age_days: PositiveFloat = 30.0
    backup_interval_hours: NonNegativeFloat = 24.0
    # How often each tenant's newest backup is restored into a scratch site to prove it; 0: never.
    restore_drill_interval_hours: NonNegativeFloat = 0.0
    offsite_s3_bucket: str | None = None  # each backup copied to S3 (backups/offsite.py); None: kept locally only
    offsite_s3_prefix: Annotated[str, BeforeValidator(lambda prefix: str(prefix).strip("/"))] = "erpmax/backups"
    offsite_s3_endpoint_url: HttpURL = None
    offsite_s3_region: str | None = None
    offsite_s3_access_key_id: str | None = None
    offsite_s3_secret_access_key: SecretStr | None = None
    log_format: Annotated[Literal["auto", "json", "console"], Lowercase] = "auto"
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)
    ] = "INFO"
    # Bearer token that /metrics asks for from anywhere but loopback; None: loopback only.
    metrics_token: str | None = Field(None, repr=False)
    # Reverse proxies in front of the API whose X-Forwarded-For is to be believed (0: none), and
    # the addresses they connect from: the header of any other peer is ignored.
    proxy_count: Annotated[int, Field(ge=0)] = 0
    trusted_proxies: Networks = LOOPBACK_NETWORKS
    # An API token lives at most this long; one asked for without an expiry gets this one.
    token_max_lifetime_days: Annotated[int, Field(ge=1, le=3650)] = 365
    # Webhook targets in these networks are allowed although private or loopback (none by default).
    webhook_allowed_networks: Networks = ()
    webhook_timeout_seconds: PositiveFloat = 10.0
    # Rate limits (api/limits.py): where they count, and each limit as the `limits` library writes it.
    rate_limit_storage_url: LimitStorageURL = "memory://"
    rate_limit_failed_auth: RateLimit = "20/minute"
    rate_limit_per_token: RateLimit = "1200/minute"
    rate_limit_creates: RateLimit = "30/hour"
    # The ports the Procfile's web and flower lines listen on (they read PORT and FLOWER_PORT themselves).
    web_port: Port = Field(8000, validation_alias="port")
    flower_port: Port = 5555

    @model_validator(mode="before")
    @classmethod
    def _embedded_unless_configured(cls, given: dict[str, Any]) -> dict[str, Any]:
        """With neither DATABASE_URL nor RABBITMQ_*: a SQLite file in DATA_DIR, the embedded broker,
        and the SITE_CREDENTIALS_KEY `make run` keeps in DATA_DIR (see ``_kept_key``)."""
        data_dir = Path(given.get("data_dir") or DEFAULT_DATA_DIR).resolve()
        embedded = not any(given.get(name) for name in ("database_url", *RabbitMQSettings.model_fields))
        chosen = {**given, "data_dir": data_dir, "embedded": embedded, "site_credentials_key_file": None}
        if embedded:
            return {
                **chosen,
                "database_url": f"sqlite:///{data_dir / 'provisioning.sqlite3'}",
                "broker_url": f"redis://127.0.0.1:{given.get('embedded_broker_port') or 6399}/0",
                **({} if given.get("site_credentials_key") else _kept_key(data_dir / KEPT_CREDENTIALS_KEY_FILE)),
            }
        if not given.get("database_url"):
            raise SettingsError("DATABASE_URL: required once RabbitMQ is configured (a postgresql:// URL)")
        return {**chosen, "broker_url": get_rabbitmq_url(given)}

    @field_validator("database_url")
    @classmethod
    def _database_driver(cls, url: str) -> str:
        """Pin the driver we install, and accept the ``postgres://`` spelling of hosting providers and
        the ``postgresql+psycopg2://`` of deployments made before the driver changed."""
        checked_url(url, DATABASE_SCHEMES)
        scheme, _, rest = url.partition("://")
        return url if scheme == "sqlite" else POSTGRESQL_DRIVER + rest

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, name: str) -> str:
        if problem := SLUG.problem("server name", name):
            raise ValueError(problem)
        return name

    @field_validator("provisioning_queue_name")
    @classmethod
    def _queue_name(cls, name: str) -> str:
        if problem := QUEUE_NAME.problem("queue name", name):
            raise ValueError(problem)
        return name

    @field_validator("site_credentials_key")
    @classmethod
    def _fernet_key(cls, key: str | None, info: ValidationInfo) -> str | None:
        if key is None:
            return key
        try:
            Fernet(key.encode())
        except ValueError:
            if kept := info.data.get("site_credentials_key_file"):
                raise ValueError(f"{kept} holds no Fernet key; delete it and `make run` makes a new one") from None
            raise ValueError(NOT_A_FERNET_KEY) from None
        return key

    @field_validator("backup_path", mode="before")
    @classmethod
    def _backups_in_data_dir(cls, path: str | Path | None, info: ValidationInfo) -> Path:
        return Path(path or info.data["data_dir"] / "backups").resolve()

    @model_validator(mode="after")
    def _limits_in_order(self) -> Settings:
        # soft limit < hard limit < RabbitMQ's consumer timeout, or the broker takes a running job's
        # message back and hands it out again while the job still runs.
        soft, hard, consumer = self.task_soft_time_limit, self.task_time_limit, self.rabbitmq_consumer_timeout_seconds
        if soft >= hard:
            raise SettingsError(f"TASK_SOFT_TIME_LIMIT: {soft} must be below TASK_TIME_LIMIT ({hard})")
        if hard >= consumer:
            raise SettingsError(
                f"TASK_TIME_LIMIT: {hard} must be below RabbitMQ's consumer timeout "
                f"(RABBITMQ_CONSUMER_TIMEOUT_SECONDS={consumer}; raise that only if the broker's is higher)"
            )
        if (grace := self.cancel_grace_seconds) >= soft:
            raise SettingsError(f"CANCEL_GRACE_SECONDS: {grace:g} must be below TASK_SOFT_TIME_LIMIT ({soft})")
        if self.lost_job_after_seconds < 3 * self.job_heartbeat_seconds:
            raise SettingsError(
                f"LOST_JOB_AFTER_SECONDS: {self.lost_job_after_seconds:g} must be at least three heartbeats "
                f"(JOB_HEARTBEAT_SECONDS={self.job_heartbeat_seconds:g})"
            )
        if bool(key_id := self.offsite_s3_access_key_id) != bool(self.offsite_s3_secret_access_key):
            given, missing = ("OFFSITE_S3_ACCESS_KEY_ID", "OFFSITE_S3_SECRET_ACCESS_KEY")[:: 1 if key_id else -1]
            raise SettingsError(f"{given}: set, but {missing} is not; set both, or neither")
        if "trusted_proxies" in self.model_fields_set and not self.proxy_count:
            raise SettingsError("TRUSTED_PROXIES: set, but PROXY_COUNT is 0, so no X-Forwarded-For would be believed; set both")
        return self

    @property
    def bench(self) -> BenchSettings:
        return BenchSettings(
            bench_path=self.bench_path,
            executable=self.bench_executable,
            site_domain=self.site_domain,
            db_root_username=self.db_root_username,
            db_root_password=self.db_root_password,
            apps=self.site_apps,
            step_timeout_seconds=self.bench_step_timeout_seconds,
            archive_path=self.bench_archive_path,
        )

    def queue_of_server(self, server_name: str) -> str:
        """The job queue of a bench server: PROVISIONING_QUEUE_NAME for the default one, so a
        deployment of one server keeps its queue; ``<that>.server.<name>`` for the others."""
        default = server_name == DEFAULT_SERVER_NAME
        return self.provisioning_queue_name if default else f"{self.provisioning_queue_name}.server.{server_name}"

    @property
    def worker_queue_name(self) -> str:
        """The queue of this process's server (SERVER_NAME): where its worker takes jobs from."""
        return self.queue_of_server(self.server_name)

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

    Raises:
        SettingsError: a value is malformed; the message names the variable.
    """
    return _read(Settings, environ)


def get_rabbitmq_url(environ: Mapping[str, str] | None = None) -> str:
    """The AMQP URL: ``RABBITMQ_URL`` when set, else one built from its parts.

    Raises:
        SettingsError: the URL has another scheme than amqp(s), or the port is not a number.
    """
    return _read(RabbitMQSettings, environ).amqp_url


def settings_or_exit(environ: Mapping[str, str] | None = None, checks: Iterable[Callable[[Settings], None]] = ()) -> Settings:
    """Load the settings and pass them through a process's own ``checks`` (those that need the
    domain, which settings do not import), or stop the process with one line naming the bad variable."""
    try:
        settings = load_settings(environ)
    except SettingsError as error:
        sys.exit(f"configuration error: {error}")
    return checked_or_exit(settings, checks)


def checked_or_exit(settings: Settings, checks: Iterable[Callable[[Settings], None]]) -> Settings:
    """The settings, once they passed a process's own ``checks``; else stop with one line."""
    try:
        for check in checks:
            check(settings)
    except SettingsError as error:
        sys.exit(f"configuration error: {error}")
    return settings


SettingsClass = TypeVar("SettingsClass", bound=BaseSettings)


def _read(settings_class: type[SettingsClass], environ: Mapping[str, str] | None) -> SettingsClass:
    source = _Environment(settings_class, os.environ if environ is None else environ)
    try:
        return settings_class(_build_sources=((source,), {}))
    except ValidationError as invalid:
        raise SettingsError(first_problem(invalid)) from None


def _kept_key(path: Path) -> dict[str, Any]:
    """The key `make run` keeps, when it has made one: every process of a quickstart, and
    `provisioning doctor` beside it, find the same key without being handed it. Only on the
    embedded defaults: on PostgreSQL and RabbitMQ no demo key is ever picked up from a checkout,
    a deployment's key is the one it is given."""
    try:
        return {"site_credentials_key": path.read_text().strip(), "site_credentials_key_file": path}
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise SettingsError(f"SITE_CREDENTIALS_KEY: cannot read the kept key {path}: {error.strerror}") from None
