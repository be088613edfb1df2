"""The API started before its database was migrated (or after a release that brought a migration
nobody applied yet): an outage the operator ends with one command, answered 503 in the error
shape with that command, never a 500 and a traceback."""

from __future__ import annotations

import requests

from provisioning.accounts.registry import TOKEN_PREFIX
from provisioning.platform import migrate
from tests.stack import RUN_ID, WebProcess, empty_database

JOBS = "/api/v1/provisioning/jobs"
BEARER = {"Authorization": f"Bearer {TOKEN_PREFIX}no-such-token"}
UPGRADE = "provisioning db upgrade"
EARLIER_REVISION = "0009"


def assert_asks_for_the_upgrade(web: WebProcess, path: str) -> None:
    response = requests.get(web.url + path, headers=BEARER, timeout=30)
    assert response.status_code == 503, (path, response.status_code, response.text)
    body = response.json()
    assert (body["code"], body["status"]) == (503, "Service Unavailable"), body
    assert UPGRADE in body["message"], body


def upgrade_lines(web: WebProcess) -> list[dict]:
    return [line for line in web.log_lines() if UPGRADE in line["message"]]


def test_before_its_migrations_the_api_answers_503_saying_to_upgrade_with_one_log_line_and_recovers_after(
    environment, tmp_path
):
    with empty_database(f"provisioning_test_{RUN_ID}_unmigrated") as database_url:
        web = WebProcess({**environment, "DATABASE_URL": database_url}, tmp_path / "web.log", WEB_CONCURRENCY="1")
        try:
            for path in (JOBS, "/api/v1/tenants/current", "/metrics"):
                assert_asks_for_the_upgrade(web, path)
            lines = upgrade_lines(web)
            assert len(lines) == 3, lines  # one line per request
            assert all(line["level"] == "error" and "database at nothing" in line["message"] for line in lines), lines

            migrate.upgrade(database_url, EARLIER_REVISION)  # behind: the release's migration not applied yet
            assert_asks_for_the_upgrade(web, JOBS)
            assert f"database at {EARLIER_REVISION}, code expects {migrate.head_revision()}" in upgrade_lines(web)[-1]["message"]

            migrate.upgrade(database_url)
            response = requests.get(web.url + JOBS, headers=BEARER, timeout=30)
            assert response.status_code == 401, response.text  # served again, without a restart
            output = web.group.output()
        finally:
            web.stop()
    assert "Traceback" not in output and "UndefinedTable" not in output


def test_the_quickstarts_sqlite_file_before_its_migrations_answers_the_same(environment, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    embedded = {name: value for name, value in environment.items() if name not in ("DATABASE_URL", "RABBITMQ_URL")}
    web = WebProcess({**embedded, "DATA_DIR": str(data_dir)}, tmp_path / "web.log", WEB_CONCURRENCY="1")
    try:
        assert_asks_for_the_upgrade(web, JOBS)
        assert len(upgrade_lines(web)) == 1
        migrate.upgrade(f"sqlite:///{data_dir / 'provisioning.sqlite3'}")
        assert requests.get(web.url + JOBS, headers=BEARER, timeout=30).status_code == 401
        output = web.group.output()
    finally:
        web.stop()
    assert "Traceback" not in output and "no such table" not in output
