"""The service on a real Frappe 15 + ERPNext bench: the API, a worker with SITE_DRIVER=bench, and
what only a real bench can prove. A few sites, each frappe alone unless the test needs ERPNext.
(Part of `make test`; `make test-real` runs it alone.)"""

from __future__ import annotations

import gzip
import json
import os
import pwd
import signal
import subprocess
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import requests

from api import create_app
from provisioning.backups.book import BackupBook
from provisioning.sites.drivers.base import BackupFile
from tests.factories import TenantFactory
from tests.helpers import StrictClient, wait_for
from tests.processes import free_port
from tests.stack import SweeperProcess, WorkerProcess

pytestmark = [pytest.mark.process, pytest.mark.xdist_group("real_bench")]

JOB_SECONDS = 600


class Service:
    """The API (in process) and a real worker on the bench, for one tenant."""

    def __init__(self, isolated, environment: dict[str, str]):
        self.isolated = isolated
        self.environment = environment
        app = create_app(isolated.settings)
        app.test_client_class = StrictClient
        self.client = app.test_client()
        with isolated.session() as session:
            self.tenant = TenantFactory(session).create()
        self.site = f"{self.tenant.tenant.slug}.{environment['SITE_DOMAIN']}"
        self.bench_path = Path(environment["BENCH_PATH"])
        self.worker = None

    def start_worker(self, **changes: str) -> None:
        self.worker = WorkerProcess({**self.environment, **changes}, self.isolated.dispatcher, concurrency=1)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def ask(self, job_type: str, **body) -> str:
        body = {"job_type": job_type, **body}
        response = self.client.post("/api/v1/provisioning/jobs", json=body, headers=self.tenant.headers())
        assert response.status_code == 201, response.json
        return response.json["data"]["id"]

    def job(self, job_id: str) -> dict:
        return self.client.get(f"/api/v1/provisioning/jobs/{job_id}", headers=self.tenant.headers()).json["data"]

    def wait(self, job_id: str, statuses=("completed", "failed", "cancelled")) -> dict:
        return wait_for(lambda: (job := self.job(job_id))["status"] in statuses and job, timeout=JOB_SECONDS,
                        interval=0.5, what=f"job {job_id} to be {' or '.join(statuses)}")  # fmt: skip

    def steps(self, job_id: str) -> list[dict]:
        return self.client.get(f"/api/v1/provisioning/jobs/{job_id}/steps", headers=self.tenant.headers()).json["data"]

    def backups(self) -> list[dict]:
        return self.client.get("/api/v1/provisioning/backups", headers=self.tenant.headers()).json["data"]

    def backup(self, backup_id: str) -> dict:
        return self.client.get(f"/api/v1/provisioning/backups/{backup_id}", headers=self.tenant.headers()).json["data"]

    def site_config(self) -> dict:
        return json.loads((self.bench_path / "sites" / self.site / "site_config.json").read_text())

    def tenant_status(self) -> str:
        return self.client.get("/api/v1/tenants/current", headers=self.tenant.headers()).json["data"]["status"]

    def record_backup(self, root: Path, owner: pwd.struct_passwd, dump: bytes) -> uuid.UUID:
        """A completed backup of the tenant's site made of ``dump`` alone, as if a backup job had taken it."""
        folder = root / self.tenant.tenant.slug / "by-hand"
        folder.mkdir(parents=True)
        path = folder / "database.sql.gz"
        path.write_bytes(gzip.compress(dump))
        for made in (folder.parent, folder, path):
            os.chown(made, owner.pw_uid, owner.pw_gid)
        with self.isolated.session() as session:
            book = BackupBook(session)
            backup = book.start(self.tenant.id, None, self.site, [BackupFile("database", path)])
            book.verify(backup)
            return backup.id

    def scheduled_drill(self, directory: Path) -> str:
        """The id of the restore drill the sweeper asks for, with drills on, as the schedule has it."""
        sweeper = SweeperProcess({**self.environment, "SWEEP_INTERVAL_SECONDS": "1", "RESTORE_DRILL_INTERVAL_HOURS": "24"},
                                 directory)  # fmt: skip
        try:
            return wait_for(lambda: self.jobs_of("restore_drill"), timeout=60, what="the scheduled restore drill")[0]["id"]
        finally:
            sweeper.stop()

    def jobs_of(self, job_type: str) -> list[dict]:
        listed = self.client.get(f"/api/v1/provisioning/jobs?job_type={job_type}", headers=self.tenant.headers())
        return listed.json["data"]

    def retry(self, job_id: str) -> str:
        response = self.client.post(f"/api/v1/provisioning/jobs/{job_id}/retry", headers=self.tenant.headers())
        assert response.status_code == 201, response.json
        return response.json["data"]["id"]

    def remove_site(self) -> None:
        """Drop the test's site, if any, as the service does it (no final backup)."""
        if self.worker is None:
            return
        if self.tenant_status() == "active":
            self.wait(self.ask("delete_site", skip_final_backup=True))


@pytest.fixture
def service(isolated, real_environment):
    made = Service(isolated, real_environment)
    yield made
    try:
        made.remove_site()
    finally:
        made.stop_worker()


class ProcessWatch:
    """Every command line on the host, sampled five times a second while it runs: what `ps` shows
    to every user."""

    def __init__(self):
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.seen.update(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines())

    def __enter__(self) -> "ProcessWatch":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def serving(realbench, site: str) -> Iterator[tuple[str, object]]:
    """``bench serve`` on a free port: its URL, and ``site``'s answer to ping by its Host header once
    it answers. Stopped afterwards with the reloader's child it starts (its process group)."""
    port = free_port()
    process = subprocess.Popen([realbench.executable, "serve", "--port", str(port)], cwd=realbench.path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def pong():
        try:
            answer = requests.get(f"{url}/api/method/ping", headers={"Host": site}, timeout=5)
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy starting
            return False
        return answer.status_code == 200 and answer.json()

    try:
        yield url, wait_for(pong, timeout=60, interval=0.5, what=f"{site} to answer ping")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def databases_and_users(realbench) -> tuple[set[str], set[str]]:
    return set(realbench.sql("SHOW DATABASES")), set(realbench.sql("SELECT user FROM mysql.user"))


def test_a_site_with_erpnext_answers_its_owner_logs_in_no_password_shows_its_backup_restores_and_its_delete_leaves_no_database(
    service, realbench, bench_folders, tmp_path
):
    service.start_worker(SITE_APPS="erpnext")
    bench_log = realbench.path / "logs" / "bench.log"
    log_before = bench_log.stat().st_size
    with ProcessWatch() as watch:
        created = service.wait(service.ask("create_site"))
    assert created["status"] == "completed", created
    password = service.client.post("/api/v1/tenants/current/admin-password", headers=service.tenant.headers()).json["data"]
    password = password["password"]

    with serving(realbench, service.site) as (url, pong):
        assert pong == {"message": "pong"}
        login = requests.post(f"{url}/api/method/login", headers={"Host": service.site}, timeout=30,
                              data={"usr": "Administrator", "pwd": password})  # fmt: skip
        assert login.status_code == 200 and login.json()["message"] == "Logged In", login.text
        apps = requests.get(f"{url}/api/method/frappe.utils.change_log.get_versions", headers={"Host": service.site},
                            cookies=login.cookies, timeout=30).json()["message"]  # fmt: skip
        assert {"frappe", "erpnext"} <= set(apps)

    written_by_bench = bench_log.read_bytes()[log_before:].decode(errors="replace")
    for secret in (password, realbench.root_password):
        assert not any(secret in line for line in watch.seen), "a password was in a command line"
        assert secret not in written_by_bench

    backed_up = service.wait(service.ask("backup_site"))
    assert backed_up["status"] == "completed", backed_up
    [backup] = [backup for backup in service.backups() if backup["job_id"] == backed_up["id"]]
    before_the_drill = databases_and_users(realbench)
    drilled = service.wait(service.scheduled_drill(tmp_path))
    assert drilled["status"] == "completed", drilled
    assert "tables of the dump" in service.steps(drilled["id"])[1]["output"]
    assert service.backup(backup["id"])["restore_proven_at"] is not None
    assert databases_and_users(realbench) == before_the_drill  # the scratch site's database and user dropped
    assert not [path for path in (realbench.path / "sites").iterdir() if ".drill." in path.name]
    assert not any((bench_folders["archive"] / "drills").iterdir())  # nor a copy of the tenant's data kept

    database = json.loads((realbench.path / "sites" / service.site / "site_config.json").read_text())["db_name"]
    deleted = service.wait(service.ask("delete_site"))
    assert deleted["status"] == "completed", deleted
    databases, users = databases_and_users(realbench)
    assert database not in databases and database not in users
    assert not (realbench.path / "sites" / service.site).exists()
    assert (bench_folders["archive"] / service.site).is_dir()
    assert [backup["status"] for backup in service.backups()] == ["completed", "completed"]  # the final one too


def test_a_restore_brings_the_backup_back_and_one_that_fails_half_way_puts_the_site_back_from_its_safety_backup(
    service, realbench, bench_folders, isolated
):
    service.start_worker()
    assert service.wait(service.ask("create_site"))["status"] == "completed"
    backed_up = service.wait(service.ask("backup_site"))
    [backup] = [backup for backup in service.backups() if backup["job_id"] == backed_up["id"]]
    database = json.loads((realbench.path / "sites" / service.site / "site_config.json").read_text())["db_name"]
    realbench.sql(f"CREATE TABLE `{database}`.after_the_backup (x int)")

    restored = service.wait(service.ask("restore_site", backup_id=backup["id"]))
    assert restored["status"] == "completed", restored
    assert realbench.sql(f"SHOW TABLES FROM `{database}` LIKE 'after_the_backup'") == []
    assert service.backup(backup["id"])["restore_proven_at"] is not None
    assert service.site_config().get("maintenance_mode") == 0  # closed during the restore, open again

    # A dump our checks pass (gzip, SQL, complete) but whose import fails half-way: real bench has
    # then dropped the site's database and made it again, and the site no longer answers.
    realbench.sql(f"CREATE TABLE `{database}`.after_the_restore (x int)")
    broken = service.record_backup(bench_folders["backups"], realbench.user, BROKEN_DUMP)
    failed = service.wait(service.ask("restore_site", backup_id=str(broken)))

    assert failed["status"] == "failed"
    assert failed["error"].startswith(f"step restore_site failed: bench could not restore the backup into {service.site}")
    assert failed["error"].endswith("; the site was put back as it was before the job")
    assert realbench.sql(f"SHOW TABLES FROM `{database}` LIKE 'after_the_restore'") == ["after_the_restore"]
    assert service.tenant_status() == "active" and service.site_config().get("maintenance_mode") == 0
    assert service.backup(str(broken))["restore_failed_at"] is not None
    listed = realbench.bench("--site", service.site, "list-apps", "-f", "json")
    assert listed.returncode == 0 and "frappe" in listed.stdout


# Passes the platform's checks of a dump (gzip, SQL, its trailer, and frappe's: __Auth), fails its import.
BROKEN_DUMP = b"""-- MariaDB dump 10.19
CREATE TABLE `__Auth` (`name` varchar(140));
THIS IS NOT SQL;
-- Dump completed on 2026-12-06  1:02:03
"""


def test_a_wrong_root_password_fails_the_create_in_one_clear_line_and_its_retry_after_the_fix_resumes(service):
    service.start_worker(DB_ROOT_PASSWORD="not-the-root-password")
    failed = service.wait(service.ask("create_site"))
    assert failed["status"] == "failed"
    assert failed["error"] == (
        "step create_site failed: the database refused the root login of `bench new-site`: "
        "check DB_ROOT_USERNAME (root) and DB_ROOT_PASSWORD"
    )

    service.stop_worker()
    service.start_worker()
    retry = service.retry(failed["id"])
    assert service.job(retry)["resume_from"] == "create_site"
    done = service.wait(retry)
    assert done["status"] == "completed", done
    assert [step["status"] for step in service.steps(retry)][0] == "skipped"  # the preconditions held already


def test_a_cancel_during_new_site_leaves_no_site_database_or_user_and_a_create_after_it_succeeds(service, realbench):
    before = databases_and_users(realbench)
    service.start_worker()
    job_id = service.ask("create_site")
    # new-site is under way once its database exists: then the cancel has something to undo.
    wait_for(lambda: databases_and_users(realbench)[0] - before[0], timeout=120, interval=0.2, what="new-site's database")
    response = service.client.post(f"/api/v1/provisioning/jobs/{job_id}/cancel", headers=service.tenant.headers())
    assert response.status_code in (200, 202), response.json

    cancelled = service.wait(job_id)
    assert cancelled["status"] == "cancelled", cancelled
    assert not (realbench.path / "sites" / service.site).exists()
    assert databases_and_users(realbench) == before

    done = service.wait(service.ask("create_site"))
    assert done["status"] == "completed", done


def test_a_drop_into_an_archive_the_bench_user_cannot_write_is_refused_before_anything_is_dropped_and_its_retry_finishes(
    service, realbench, bench_folders
):
    """Real bench would drop the database and its user, then fail to move the site's folder."""
    service.start_worker()
    assert service.wait(service.ask("create_site"))["status"] == "completed"
    database = json.loads((realbench.path / "sites" / service.site / "site_config.json").read_text())["db_name"]
    archive = bench_folders["archive"]
    os.chown(archive, 0, 0)  # root's alone: the bench's user cannot enter it

    failed = service.wait(service.ask("delete_site", skip_final_backup=True))
    assert failed["status"] == "failed"
    assert failed["error"] == (
        f"step drop_site failed: bench runs as {realbench.user.pw_name} (the bench's frappe_user: the worker is root), "
        f"which cannot write the archive folder {archive}: make it writable by {realbench.user.pw_name}"
    )
    assert database in databases_and_users(realbench)[0] and (realbench.path / "sites" / service.site).is_dir()

    os.chown(archive, realbench.user.pw_uid, realbench.user.pw_gid)
    done = service.wait(service.retry(failed["id"]))
    assert done["status"] == "completed", done
    assert database not in databases_and_users(realbench)[0] and (archive / service.site).is_dir()


def test_an_app_whose_install_fails_is_never_counted_as_installed(service, realbench, broken_app):
    """frappe lists an app before its after_install hooks run: after the failure list-apps names it."""
    service.start_worker(SITE_APPS=broken_app)
    failed = service.wait(service.ask("create_site"))
    assert failed["status"] == "failed"
    assert failed["error"].startswith("step create_site failed: `bench new-site")
    assert "after_install on purpose" in failed["error"]
    listed = realbench.bench("--site", service.site, "list-apps", "-f", "json")
    assert broken_app in json.loads(listed.stdout[listed.stdout.index("{"):])[service.site]  # the hazard itself

    retried = service.wait(service.retry(failed["id"]))
    assert retried["status"] == "failed" and "after_install on purpose" in retried["error"]  # made again, failed again
    assert [step["status"] for step in service.steps(retried["id"])][-1] == "pending"  # verify_site never ran
    removed = realbench.bench("drop-site", service.site, "--db-root-username", "root", "--no-backup", "--force",
                              "--archived-sites-path", str(realbench.path / "archived" / "sites"),
                              stdin=f"{realbench.root_password}\n")  # fmt: skip
    assert removed.returncode == 0, removed.stderr[-2000:]
