"""The service on a real Frappe 15 + ERPNext bench: the API, a worker with SITE_DRIVER=bench, and
what only a real bench can prove. A few sites, each frappe alone unless the test needs ERPNext.
(`make test-real`; about five minutes.)"""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest
import requests

from api import create_app
from tests.factories import TenantFactory
from tests.helpers import StrictClient, wait_for
from tests.processes import free_port
from tests.stack import WorkerProcess

pytestmark = [pytest.mark.process]

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

    def retry(self, job_id: str) -> str:
        response = self.client.post(f"/api/v1/provisioning/jobs/{job_id}/retry", headers=self.tenant.headers())
        assert response.status_code == 201, response.json
        return response.json["data"]["id"]

    def remove_site(self) -> None:
        """Drop the test's site, if any, as the service does it (no final backup)."""
        if self.worker is None:
            return
        tenant = self.client.get("/api/v1/tenants/current", headers=self.tenant.headers()).json["data"]
        if tenant["status"] == "active":
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


def served(realbench, site: str):
    """``bench serve`` on a free port, for ``site`` by its Host header; the process and its URL."""
    port = free_port()
    process = subprocess.Popen([realbench.executable, "serve", "--port", str(port)], cwd=realbench.path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def pong():
        try:
            answer = requests.get(f"{url}/api/method/ping", headers={"Host": site}, timeout=5)
        except requests.ConnectionError:
            return False
        return answer.status_code == 200 and answer.json()

    return process, url, wait_for(pong, timeout=60, interval=0.5, what=f"{site} to answer ping")


def databases_and_users(realbench) -> tuple[set[str], set[str]]:
    return set(realbench.sql("SHOW DATABASES")), set(realbench.sql("SELECT user FROM mysql.user"))


def test_a_site_with_erpnext_answers_its_owner_logs_in_no_password_shows_its_backup_restores_and_its_delete_leaves_no_database(
    service, realbench, bench_folders
):
    service.start_worker(SITE_APPS="erpnext")
    bench_log = realbench.path / "logs" / "bench.log"
    log_before = bench_log.stat().st_size
    with ProcessWatch() as watch:
        created = service.wait(service.ask("create_site"))
    assert created["status"] == "completed", created
    password = service.client.post("/api/v1/tenants/current/admin-password", headers=service.tenant.headers()).json["data"]
    password = password["password"]

    process, url, pong = served(realbench, service.site)
    try:
        assert pong == {"message": "pong"}
        login = requests.post(f"{url}/api/method/login", headers={"Host": service.site}, timeout=30,
                              data={"usr": "Administrator", "pwd": password})  # fmt: skip
        assert login.status_code == 200 and login.json()["message"] == "Logged In", login.text
        apps = requests.get(f"{url}/api/method/frappe.utils.change_log.get_versions", headers={"Host": service.site},
                            cookies=login.cookies, timeout=30).json()["message"]  # fmt: skip
        assert {"frappe", "erpnext"} <= set(apps)
    finally:
        process.terminate()
        process.wait(timeout=30)

    written_by_bench = bench_log.read_bytes()[log_before:].decode(errors="replace")
    for secret in (password, realbench.root_password):
        assert not any(secret in line for line in watch.seen), "a password was in a command line"
        assert secret not in written_by_bench

    backed_up = service.wait(service.ask("backup_site"))
    assert backed_up["status"] == "completed", backed_up
    assert_the_backup_restores(service, realbench, bench_folders, backed_up["id"])

    database = json.loads((realbench.path / "sites" / service.site / "site_config.json").read_text())["db_name"]
    deleted = service.wait(service.ask("delete_site"))
    assert deleted["status"] == "completed", deleted
    databases, users = databases_and_users(realbench)
    assert database not in databases and database not in users
    assert not (realbench.path / "sites" / service.site).exists()
    assert (bench_folders["archive"] / service.site).is_dir()
    backups = service.client.get("/api/v1/provisioning/backups", headers=service.tenant.headers()).json["data"]
    assert [backup["status"] for backup in backups] == ["completed", "completed"]  # the final one too, as the bench's user


def assert_the_backup_restores(service, realbench, bench_folders, job_id: str) -> None:
    """The backup's dump and files, restored by bench into a scratch site, make ERPNext's tables there."""
    [backup] = [backup for backup in service.client.get("/api/v1/provisioning/backups", headers=service.tenant.headers())
                .json["data"] if backup["job_id"] == job_id]  # fmt: skip
    folder = bench_folders["backups"] / service.tenant.tenant.slug / job_id
    files = {file["kind"]: str(folder / file["name"]) for file in backup["files"]}
    scratch = f"scratch-{job_id[:8]}.real.test"
    root, admin = realbench.root_password, "Scratch-Admin-7q"
    made = realbench.bench("new-site", scratch, "--db-root-username", "root", stdin=f"{root}\n{admin}\n{admin}\n")
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    try:
        restored = realbench.bench(
            "--site", scratch, "restore", files["database"], "--with-public-files", files["public_files"],
            "--with-private-files", files["private_files"], "--db-root-username", "root", stdin=f"{root}\n{admin}\n{admin}\n",
        )  # fmt: skip
        assert restored.returncode == 0, restored.stdout[-2000:] + restored.stderr[-2000:]
        database = json.loads((realbench.path / "sites" / scratch / "site_config.json").read_text())["db_name"]
        assert realbench.sql(f"SHOW TABLES FROM `{database}` LIKE 'tabSales Invoice'") == ["tabSales Invoice"]
    finally:
        realbench.bench("drop-site", scratch, "--db-root-username", "root", "--archived-sites-path",
                        str(bench_folders["archive"]), "--no-backup", "--force", stdin=f"{root}\n")  # fmt: skip


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
