"""Settings from the environment: defaults, spellings, and one clear line for each bad value."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.jobs.workflows import check_simulated_fail_step
from provisioning.platform.settings import SettingsError, get_rabbitmq_url, load_settings
from provisioning.sites.credentials import new_key
from tests.processes import procfile_commands

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POSTGRES = "postgresql://app@db.internal/provisioning"
KEY = new_key()


def test_with_no_database_or_broker_configured_the_embedded_defaults_apply(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    assert settings.embedded
    assert settings.database_url == f"sqlite:///{tmp_path / 'provisioning.sqlite3'}"
    assert settings.broker_url.startswith("redis://127.0.0.1:")
    assert settings.provisioning_queue_name == "erpmax.provisioning"


def test_names_are_case_insensitive_and_unknown_ones_are_ignored():
    settings = load_settings(
        {"database_url": POSTGRES, "RabbitMQ_Url": "amqp://u:p@mq:5672//", "Provisioning_Queue_Name": "q1", "SOMETHING_ELSE": "x"}
    )
    assert not settings.embedded
    assert settings.broker_url == "amqp://u:p@mq:5672//"
    assert settings.provisioning_queue_name == "q1"
    assert settings.dead_letter_queue_name == "q1.dead"


@pytest.mark.parametrize(
    "given", ["postgres://a@h/d", "postgresql://a@h/d", "postgresql+psycopg://a@h/d", "postgresql+psycopg2://a@h/d"]
)
def test_postgres_urls_are_pinned_to_the_installed_driver(given):
    """A deployment made when the driver was psycopg2, and said so in its URL, keeps working."""
    assert load_settings({"DATABASE_URL": given, "RABBITMQ_HOST": "mq"}).database_url == "postgresql+psycopg://a@h/d"


def test_the_broker_url_is_built_from_its_parts_with_the_password_escaped():
    url = get_rabbitmq_url(
        {"RABBITMQ_HOST": "mq", "RABBITMQ_PORT": "5673", "RABBITMQ_USER": "svc", "RABBITMQ_PASSWORD": "p@ss/w"}
    )
    assert url == "amqp://svc:p%40ss%2Fw@mq:5673/%2F"


def test_rabbitmq_url_is_preferred_over_its_parts():
    assert get_rabbitmq_url({"RABBITMQ_URL": "amqps://x@y//", "RABBITMQ_HOST": "other"}) == "amqps://x@y//"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"DATABASE_URL": POSTGRES, "RABBITMQ_PORT": "abc"}, "RABBITMQ_PORT"),
        ({"DATABASE_URL": POSTGRES, "RABBITMQ_PORT": "70000"}, "RABBITMQ_PORT"),
        ({"DATABASE_URL": POSTGRES, "RABBITMQ_URL": "http://mq:5672"}, "RABBITMQ_URL"),
        ({"DATABASE_URL": "mysql://db/x", "RABBITMQ_HOST": "mq"}, "DATABASE_URL"),
        ({"RABBITMQ_HOST": "mq"}, "DATABASE_URL"),
        ({"SIMULATED_STEP_SECONDS": "-1"}, "SIMULATED_STEP_SECONDS"),
        ({"SIMULATED_STEP_SECONDS": "soon"}, "SIMULATED_STEP_SECONDS"),
        ({"SIMULATED_STEP_SECONDS": "nan"}, "SIMULATED_STEP_SECONDS"),
        ({"JOB_HEARTBEAT_SECONDS": "nan"}, "JOB_HEARTBEAT_SECONDS"),  # nan passed every comparison
        ({"IDEMPOTENCY_KEY_HOURS": "inf"}, "IDEMPOTENCY_KEY_HOURS"),  # every job request was then a 500
        ({"BROKER_CONNECT_TIMEOUT": "infinity"}, "BROKER_CONNECT_TIMEOUT"),
        ({"PROVISIONING_QUEUE_NAME": "two words"}, "PROVISIONING_QUEUE_NAME"),
        ({"PROVISIONING_QUEUE_NAME": "amq.jobs"}, "PROVISIONING_QUEUE_NAME"),  # RabbitMQ's own
        ({"PROVISIONING_QUEUE_NAME": "jobs/x"}, "PROVISIONING_QUEUE_NAME"),
        ({"PROVISIONING_QUEUE_NAME": "-jobs"}, "PROVISIONING_QUEUE_NAME"),  # read as an option by -Q
        ({"PROVISIONING_QUEUE_NAME": "jo\x00bs"}, "PROVISIONING_QUEUE_NAME"),
        ({"DATABASE_URL": "postgresql://u:p@db:notaport/x", "RABBITMQ_HOST": "mq"}, "DATABASE_URL"),
        ({"DATABASE_URL": POSTGRES, "RABBITMQ_URL": "amqp://u:p@mq:99999//"}, "RABBITMQ_URL"),
        ({"DATABASE_URL": POSTGRES, "RABBITMQ_HOST": "mq:5672"}, "RABBITMQ_HOST"),
        ({"TASK_SOFT_TIME_LIMIT": "2000", "TASK_TIME_LIMIT": "1000"}, "TASK_SOFT_TIME_LIMIT"),
        ({"TASK_SOFT_TIME_LIMIT": "1700", "TASK_TIME_LIMIT": "1900"}, "TASK_TIME_LIMIT"),
        ({"CANCEL_GRACE_SECONDS": "1600"}, "CANCEL_GRACE_SECONDS"),
        ({"JOB_HEARTBEAT_SECONDS": "30", "LOST_JOB_AFTER_SECONDS": "60"}, "LOST_JOB_AFTER_SECONDS"),
        ({"PORT": "abc"}, "PORT"),
        ({"FLOWER_PORT": "70000"}, "FLOWER_PORT"),
        ({"SITE_DRIVER": "docker"}, "SITE_DRIVER"),
        ({"SITE_CREDENTIALS_KEY": "not-a-key"}, "SITE_CREDENTIALS_KEY"),
        ({"BACKUP_KEEP_LAST": "0"}, "BACKUP_KEEP_LAST"),
        ({"BACKUP_INTERVAL_HOURS": "-1"}, "BACKUP_INTERVAL_HOURS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"PROXY_COUNT": "-1"}, "PROXY_COUNT"),
        ({"PROXY_COUNT": "1", "TRUSTED_PROXIES": "10.0.0.5, nginx.internal"}, "TRUSTED_PROXIES"),
        ({"PROXY_COUNT": "1", "TRUSTED_PROXIES": "10.0.0.5/8"}, "TRUSTED_PROXIES"),  # host bits set: a typo?
        ({"TRUSTED_PROXIES": "10.0.0.5"}, "TRUSTED_PROXIES"),  # without PROXY_COUNT nothing would be believed
        ({"OFFSITE_S3_ENDPOINT_URL": "s3.example.test:9000"}, "OFFSITE_S3_ENDPOINT_URL"),  # no scheme
        ({"OFFSITE_S3_ENDPOINT_URL": "https://s3.example.test:port"}, "OFFSITE_S3_ENDPOINT_URL"),
        ({"OFFSITE_S3_ACCESS_KEY_ID": "AKIA123"}, "OFFSITE_S3_ACCESS_KEY_ID"),  # its secret missing
        ({"RATE_LIMIT_CREATES": "banana"}, "RATE_LIMIT_CREATES"),
        ({"RATE_LIMIT_PER_TOKEN": "20/fortnight"}, "RATE_LIMIT_PER_TOKEN"),
        ({"RATE_LIMIT_FAILED_AUTH": "0/minute"}, "RATE_LIMIT_FAILED_AUTH"),  # would refuse every credential
        ({"RATE_LIMIT_PER_TOKEN": "10/second;0/day"}, "RATE_LIMIT_PER_TOKEN"),
        ({"RATE_LIMIT_STORAGE_URL": "127.0.0.1:6379"}, "RATE_LIMIT_STORAGE_URL"),  # no scheme
    ],
)
def test_a_malformed_value_is_refused_naming_the_variable(environ, variable):
    with pytest.raises(SettingsError, match=f"^{variable}:"):
        load_settings(environ)


def test_a_rate_limit_that_is_not_one_is_refused_in_one_line_naming_the_variable():
    with pytest.raises(SettingsError) as refused:
        load_settings({"RATE_LIMIT_CREATES": "banana"})
    assert str(refused.value) == "RATE_LIMIT_CREATES: 'banana' is not a rate limit (20/minute, 600 per hour, 5/second;100/day)"


def test_rate_limits_count_in_memory_unless_a_storage_is_named_and_may_hold_several_windows(tmp_path):
    assert load_settings({"DATA_DIR": str(tmp_path)}).rate_limit_storage_url == "memory://"
    given = {"RATE_LIMIT_CREATES": "5/second;100/day", "DATA_DIR": str(tmp_path)}
    assert load_settings(given).rate_limit_creates == "5/second;100/day"


def test_a_trusted_proxy_network_with_host_bits_set_is_refused_saying_which_network_was_meant():
    with pytest.raises(SettingsError, match=r"^TRUSTED_PROXIES: '10.0.0.5/8' has host bits set; the network is 10.0.0.0/8$"):
        load_settings({"PROXY_COUNT": "1", "TRUSTED_PROXIES": "10.0.0.5/8"})


def test_trusted_proxies_are_loopback_unless_named():
    assert [str(network) for network in load_settings({"PROXY_COUNT": "1"}).trusted_proxies] == ["127.0.0.0/8", "::1/128"]
    named = load_settings({"PROXY_COUNT": "2", "TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16 fd00::/8"}).trusted_proxies
    assert [str(network) for network in named] == ["10.0.0.5/32", "10.1.0.0/16", "fd00::/8"]


@pytest.mark.parametrize("process", ["web", "worker", "flower", "sweeper", "cli"])
def test_a_process_started_with_a_bad_setting_stops_with_one_line_naming_it(process):
    command = procfile_commands().get(process, "provisioning tenant list")
    result = subprocess.run(
        ["sh", "-c", command],
        cwd=PROJECT_ROOT,
        env={"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin", "DATABASE_URL": POSTGRES, "RABBITMQ_PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["configuration error: RABBITMQ_PORT: 'abc' is not a whole number"]


def test_secrets_never_show_in_the_settings_repr():
    settings = load_settings(
        {
            "DB_ROOT_PASSWORD": "root-pw-123", "METRICS_TOKEN": "scrape-tok", "SITE_CREDENTIALS_KEY": KEY,
            "OFFSITE_S3_ACCESS_KEY_ID": "AKIA123", "OFFSITE_S3_SECRET_ACCESS_KEY": "s3-secret-456",
        }
    )  # fmt: skip
    assert settings.bench.db_root_password == "root-pw-123" and settings.metrics_token == "scrape-tok"
    assert settings.offsite_s3_secret_access_key.get_secret_value() == "s3-secret-456"
    assert not [secret for secret in ("root-pw-123", "scrape-tok", KEY, "s3-secret-456") if secret in repr(settings)]
    assert "s3-secret-456" not in str(settings.model_dump())  # a SecretStr, even dumped


def test_offsite_copies_are_off_unless_a_bucket_is_set_and_the_prefix_is_kept_without_slashes():
    assert load_settings({}).offsite_s3_bucket is None and load_settings({}).offsite_s3_prefix == "erpmax/backups"
    settings = load_settings({"OFFSITE_S3_BUCKET": "backups", "OFFSITE_S3_PREFIX": "/fleet/eu/"})
    assert (settings.offsite_s3_bucket, settings.offsite_s3_prefix) == ("backups", "fleet/eu")


def test_the_web_and_flower_ports_are_those_the_procfile_uses_when_unset(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    assert (settings.web_port, settings.flower_port) == (8000, 5555)
    procfile = procfile_commands()
    assert "${PORT:-8000}" in procfile["web"] and "${FLOWER_PORT:-5555}" in procfile["flower"]
    assert load_settings({"DATA_DIR": str(tmp_path), "PORT": "8080", "FLOWER_PORT": "5556"}).web_port == 8080


def test_every_step_the_simulated_driver_can_be_told_to_fail_is_accepted_verify_backup_included(tmp_path):
    for step in ("check_preconditions", "install_apps", "final_backup", "run_backup", "verify_backup"):
        settings = load_settings({"DATA_DIR": str(tmp_path), "SIMULATED_FAIL_STEP": step})
        check_simulated_fail_step(settings)
        assert settings.simulated_fail_step == step


@pytest.mark.parametrize("step", ["no_such_step", "record_backup"])  # record_backup: the platform's own bookkeeping
def test_a_step_the_simulated_driver_cannot_fail_is_refused_naming_the_variable(tmp_path, step):
    with pytest.raises(SettingsError, match=f"^SIMULATED_FAIL_STEP: '{step}' is no step the simulated driver can fail"):
        check_simulated_fail_step(load_settings({"DATA_DIR": str(tmp_path), "SIMULATED_FAIL_STEP": step}))


def test_a_worker_told_to_fail_a_step_that_does_not_exist_stops_as_it_starts_with_one_line_naming_it(tmp_path):
    result = subprocess.run(
        ["sh", "-c", procfile_commands()["worker"]],
        cwd=PROJECT_ROOT,
        env={
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
            "DATA_DIR": str(tmp_path),
            "EMBEDDED_BROKER_PORT": "1",  # nothing answers there: a worker that got as far as connecting would fail otherwise
            "SIMULATED_FAIL_STEP": "no_such_step",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: SIMULATED_FAIL_STEP: 'no_such_step' is no step the simulated driver can fail")


def test_without_site_credentials_key_every_process_finds_the_key_make_run_keeps_in_data_dir(tmp_path):
    assert load_settings({"DATA_DIR": str(tmp_path)}).site_credentials_key is None
    (tmp_path / "site-credentials.key").write_text(KEY + "\n")

    kept = load_settings({"DATA_DIR": str(tmp_path)})
    assert (kept.site_credentials_key, kept.site_credentials_key_file) == (KEY, tmp_path / "site-credentials.key")
    other = new_key()
    given = load_settings({"DATA_DIR": str(tmp_path), "SITE_CREDENTIALS_KEY": other})
    assert (given.site_credentials_key, given.site_credentials_key_file) == (other, None), "the variable wins"


def test_on_postgresql_and_rabbitmq_no_kept_demo_key_is_picked_up(tmp_path):
    """A deployment started from a checkout where `make run` once ran must not encrypt its sites'
    passwords with the demo key: without SITE_CREDENTIALS_KEY it has none, and says so."""
    (tmp_path / "site-credentials.key").write_text(KEY + "\n")
    configured = load_settings(
        {"DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://db/x", "RABBITMQ_URL": "amqp://broker//"}
    )
    assert (configured.site_credentials_key, configured.site_credentials_key_file) == (None, None)


def test_a_kept_key_file_without_a_key_stops_the_process_naming_the_file(tmp_path):
    (tmp_path / "site-credentials.key").write_text("not a key")
    with pytest.raises(SettingsError, match=f"^SITE_CREDENTIALS_KEY: {tmp_path / 'site-credentials.key'} holds no Fernet key"):
        load_settings({"DATA_DIR": str(tmp_path)})


def test_the_default_worker_name_is_its_queue_at_its_host_so_deployments_on_one_broker_never_share_one(tmp_path):
    """Celery's own default (celery@host), or one name for all (worker@host), would make two
    deployments' workers on one machine answer as one in Flower, pings and remote control."""
    stub = tmp_path / "celery"
    stub.write_text('#!/bin/sh\nwhile [ "$1" != --hostname ]; do shift; done\necho "$2"\n')
    stub.chmod(0o755)

    def worker_name(**environ: str) -> str:
        # The real `provisioning server queue` next, which names the queue.
        path = os.pathsep.join([str(tmp_path), str(Path(sys.executable).parent), "/usr/bin", "/bin"])
        env = {"PATH": path, "DATA_DIR": str(tmp_path), **environ}
        return subprocess.run(["sh", "-c", procfile_commands()["worker"]], env=env, capture_output=True, text=True).stdout.strip()

    assert worker_name() == "erpmax.provisioning@%h"  # Celery puts the host name in for %h
    assert worker_name(PROVISIONING_QUEUE_NAME="acme.provisioning") == "acme.provisioning@%h"
    assert worker_name(PROVISIONING_QUEUE_NAME="acme.provisioning", WORKER_NAME="w2@%h") == "w2@%h"
    # A worker of another bench server than the default one is named after that server's queue.
    assert worker_name(SERVER_NAME="eu-1") == "erpmax.provisioning.server.eu-1@%h"
