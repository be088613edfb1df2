"""Health: `/healthz`, `/readyz` and `provisioning doctor` tell which part is down and what to do."""

from datetime import timedelta
from urllib.parse import urlsplit

import requests
from click.testing import CliRunner
from sqlalchemy import text, update

from api import create_app
from provisioning.cli import main
from provisioning.enums import JobType
from provisioning.models import JobEvent
from provisioning.platform.db import utcnow
from tests.factories import TenantFactory
from tests.helpers import committing
from tests.stack import RABBITMQ_URL, WebProcess, WorkerProcess

CLOSED_BROKER = "amqp://guest:guest@127.0.0.1:1//"
CLOSED_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
ALL_READY = {"database": {"ok": True}, "migrations": {"ok": True}, "broker": {"ok": True}}


def test_healthz_answers_without_a_token(client):
    response = client.get("/healthz")
    assert (response.status_code, response.json) == (200, {"status": "ok"})


def test_readyz_is_ready_when_the_database_its_schema_and_the_broker_are(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["status"] == "ready"
    assert {name: check["ok"] for name, check in response.json["checks"].items()} == {
        "database": True,
        "migrations": True,
        "broker": True,
    }


def test_readyz_tells_anyone_which_parts_are_ok_and_nothing_of_where_they_are(web, settings):
    response = requests.get(f"{web.url}/readyz", timeout=10)  # no token: a load balancer's probe
    assert (response.status_code, response.json()) == (200, {"status": "ready", "checks": ALL_READY})
    database, broker = urlsplit(settings.database_url), urlsplit(settings.broker_url)
    for secret_of_ours in (database.username, database.hostname, database.path.strip("/"), broker.username, broker.hostname):
        assert secret_of_ours not in response.text, secret_of_ours


def test_readyz_with_parts_down_tells_anyone_which_and_only_the_log_why_with_no_password(environment, tmp_path):
    down = {
        **environment,
        "DATABASE_URL": "postgresql://dbuser:db-pass-7f3a@127.0.0.1:1/proddb",
        "RABBITMQ_URL": "amqp://mquser:mq-pass-9c1e@127.0.0.1:1/prod",
    }
    web = WebProcess(down, tmp_path / "web.log", WEB_CONCURRENCY="1")
    try:
        response = requests.get(f"{web.url}/readyz", timeout=30)
        log = web.group.output()
    finally:
        web.stop()

    assert response.status_code == 503
    assert response.json() == {
        "code": 503,
        "status": "Service Unavailable",
        "message": "not ready: database, migrations, broker down",
        "checks": {"database": {"ok": False}, "migrations": {"ok": False}, "broker": {"ok": False}},
    }
    reasons = [line["message"] for line in web.log_lines() if line["message"].startswith("not ready: ")]
    assert len(reasons) == 1, reasons
    assert "FAIL database: unreachable" in reasons[0] and "fix DATABASE_URL" in reasons[0]
    assert "FAIL broker: unreachable" in reasons[0] and "fix RABBITMQ_URL" in reasons[0]
    for secret in ("db-pass-7f3a", "mq-pass-9c1e"):
        assert secret not in response.text and secret not in log


def test_readyz_answers_503_naming_the_broker_when_it_is_down(settings):
    response = create_app(settings.model_copy(update={"broker_url": CLOSED_BROKER})).test_client().get("/readyz")
    assert response.status_code == 503
    assert (response.json["code"], response.json["status"]) == (503, "Service Unavailable")
    assert response.json["message"] == "not ready: broker down"
    assert response.json["checks"] == {"database": {"ok": True}, "migrations": {"ok": True}, "broker": {"ok": False}}


def test_readyz_answers_503_naming_the_database_when_it_is_down(settings):
    response = create_app(settings.model_copy(update={"database_url": CLOSED_DATABASE})).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["message"] == "not ready: database, migrations down"


def test_doctor_passes_when_everything_answers(isolated):
    """On a database and queue of its own: the other tests' jobs, events and backups (some failed
    on purpose) are not this deployment's."""
    worker = WorkerProcess(isolated.environment, isolated.dispatcher, concurrency=1)
    try:
        result = CliRunner().invoke(main, ["doctor"], env=isolated.environment)
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()  # the checks; log lines, if any, go to standard error
        assert [line.split(":")[0] for line in lines] == [
            "ok   configuration",
            "ok   site driver",
            "ok   credentials key",
            "ok   database",
            "ok   migrations",
            "ok   broker",
            "ok   servers",
            "ok   standby pools",
            "ok   queues",
            "ok   workers",
            "ok   job events",
            "ok   webhooks",
            "ok   restore drills",
            "ok   offsite backups",
        ]
        assert worker.name in lines[9]
    finally:
        worker.stop()


def test_doctor_fails_when_announcements_wait_for_a_relay_that_does_not_run(isolated):
    with isolated.session() as session:
        tenant = TenantFactory(session).create()
        job = committing(session).request_job(tenant.id, JobType.CREATE_SITE)
        session.execute(update(JobEvent).where(JobEvent.job_id == job.id).values(created_at=utcnow() - timedelta(minutes=2)))
        session.commit()

    result = CliRunner().invoke(main, ["doctor"], env=isolated.environment)
    events = next(line for line in result.stdout.splitlines() if " job events:" in line)
    assert events.startswith("FAIL job events: 1 wait to be announced, the oldest for 1") and "start the sweeper" in events
    assert result.exit_code == 1


def test_doctor_fails_with_one_line_per_check_and_what_to_do(environment):
    result = CliRunner().invoke(main, ["doctor"], env={**environment, "RABBITMQ_URL": CLOSED_BROKER})
    assert result.exit_code == 1
    broker = next(line for line in result.output.splitlines() if " broker:" in line)
    assert broker.startswith("FAIL broker: unreachable") and "rabbitmq-server -detached" in broker
    assert "ok   database" in result.output


def test_doctor_names_a_wrong_bench_setting_and_a_missing_credentials_key(environment):
    broken = {**environment, "SITE_DRIVER": "bench", "BENCH_PATH": "/nonexistent", "SITE_CREDENTIALS_KEY": ""}
    result = CliRunner().invoke(main, ["doctor"], env=broken)
    assert result.exit_code == 1
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines()}
    assert "BENCH_PATH: /nonexistent is not a bench directory" in lines["FAIL site driver"]
    assert "provisioning credentials-key" in lines["FAIL credentials key"]


def test_doctor_counts_only_the_workers_that_consume_its_queue(isolated, worker):
    # The run's worker answers on the same broker but consumes another queue: another deployment's, for this one.
    result = CliRunner().invoke(main, ["doctor"], env=isolated.environment)
    workers = next(line for line in result.stdout.splitlines() if " workers:" in line)
    assert workers.startswith("FAIL workers: no worker consumes the queue of server(s) default"), workers
    assert "other(s) consume other queues" in workers and worker.name not in workers
    assert result.exit_code == 1


def test_doctor_says_to_create_a_missing_database_and_a_missing_vhost_not_to_start_the_servers(environment):
    missing = {
        **environment,
        "DATABASE_URL": environment["DATABASE_URL"].rsplit("/", 1)[0] + "/no_such_database",
        "RABBITMQ_URL": RABBITMQ_URL.rstrip("/") + "/no-such-vhost",
    }
    result = CliRunner().invoke(main, ["doctor"], env=missing)
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines()}
    assert "-> create it: createdb -h 127.0.0.1 -p 5432 -U postgres no_such_database" in lines["FAIL database"]
    assert "-> create the vhost: rabbitmqctl add_vhost no-such-vhost" in lines["FAIL broker"]
    assert "pg_ctlcluster" not in result.stdout and "rabbitmq-server" not in result.stdout


def test_doctor_does_not_say_to_upgrade_a_database_a_newer_release_migrated(isolated):
    with isolated.session() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        session.commit()
    result = CliRunner().invoke(main, ["doctor"], env=isolated.environment)
    migrations = next(line for line in result.stdout.splitlines() if " migrations:" in line)
    assert migrations.startswith("FAIL migrations: database at 9999") and "this code is older" in migrations, migrations


def test_readyz_is_ready_on_a_schema_a_later_release_migrated_which_the_api_serves(isolated):
    """A rolling deploy: the new release migrated first, the old web processes still serve."""
    with isolated.session() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        session.commit()
    answer = create_app(isolated.settings).test_client().get("/readyz")
    assert (answer.status_code, answer.get_json()["checks"]["migrations"]) == (200, {"ok": True})


def test_doctor_says_createdb_without_a_user_when_the_database_url_names_none(environment):
    """PostgreSQL then uses the login's own name, and so does createdb."""
    missing = {**environment, "DATABASE_URL": "postgresql://127.0.0.1:5432/no_such_database"}
    result = CliRunner().invoke(main, ["doctor"], env=missing)
    database = next(line for line in result.stdout.splitlines() if " database:" in line)
    assert database.endswith("-> create it: createdb -h 127.0.0.1 -p 5432 no_such_database"), database
