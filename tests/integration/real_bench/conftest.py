"""A real Frappe 15 + ERPNext bench for the real suite, stood up by ``../shared/realbench``.

The scripts are found at ``REALBENCH_SCRIPTS``, else at ``../shared/realbench`` beside the
checkout or beside the repository it was cloned from. If they are missing, or the bench cannot be
set up, the suite fails saying why: it is never skipped. Its tests run one after another, on one
xdist worker (group ``real_bench``): they judge what a job left by the bench's whole MariaDB (its
databases and users) and by every command line on the host, which another test's site would change.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import machine_lock
from tests.stack import RUN_ID

SETUP_TIMEOUT_SECONDS = 20 * 60
PROJECT_ROOT = Path(__file__).resolve().parents[3]


def realbench_scripts() -> Path:
    """``REALBENCH_SCRIPTS``, else ``../shared/realbench`` beside this checkout, else beside the
    repository it was cloned from (CI tests a fresh clone, made wherever CI likes)."""
    if given := os.environ.get("REALBENCH_SCRIPTS"):
        return Path(given)
    beside = [PROJECT_ROOT.parent]
    origin = subprocess.run(["git", "-C", str(PROJECT_ROOT), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    if origin and Path(origin).is_dir():  # a clone of a repository on this machine
        beside.append(Path(origin).resolve().parent)
    candidates = [folder / "shared" / "realbench" for folder in beside]
    return next((folder for folder in candidates if (folder / "setup.sh").is_file()), candidates[0])


@dataclass(frozen=True)
class RealBench:
    """What setup.sh printed (``export NAME=value``), as a real bench's caller needs it."""

    exports: dict[str, str]

    @property
    def path(self) -> Path:
        return Path(self.exports["REALBENCH_BENCH_DIR"])

    @property
    def executable(self) -> str:
        return self.exports["REALBENCH_BENCH_EXE"]

    @property
    def user(self) -> pwd.struct_passwd:
        return pwd.getpwnam(self.exports["REALBENCH_FRAPPE_USER"])

    @property
    def root_password(self) -> str:
        return self.exports["REALBENCH_DB_ROOT_PASSWORD"]

    def sql(self, query: str) -> list[str]:
        """Rows of a query to the bench's MariaDB as root, a line each (the password in the
        client's environment, MYSQL_PWD, never in its arguments)."""
        command = ["mariadb", "-h", self.exports["REALBENCH_DB_HOST"], "-P", self.exports["REALBENCH_DB_PORT"], "-u",
                   self.exports["REALBENCH_DB_ROOT_USERNAME"], "--batch", "--skip-column-names", "-e", query]  # fmt: skip
        done = subprocess.run(command, env={**os.environ, "MYSQL_PWD": self.root_password}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    def bench(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([self.executable, *args], cwd=self.path, input=stdin, capture_output=True, text=True,
                              start_new_session=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="session")
def realbench() -> Iterator[RealBench]:
    """The bench, for this test run alone: another run on this machine waits for its turn."""
    with machine_lock("erpmax-realbench", "another test run's real-bench suite to finish", timeout=1800):
        yield set_up_realbench()


def set_up_realbench(settings: dict[str, str] | None = None) -> RealBench:
    """The bench setup.sh stands up (or finds up already), with its settings (REALBENCH_DIR, ports...)
    changed by ``settings``."""
    scripts = realbench_scripts()
    if not (scripts / "setup.sh").is_file():
        pytest.fail(f"no realbench scripts at {scripts}: set REALBENCH_SCRIPTS to the folder with setup.sh", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("realbench's setup.sh runs as root: run the real suite as root", pytrace=False)
    try:
        done = subprocess.run(["bash", str(scripts / "setup.sh")], capture_output=True, text=True, timeout=SETUP_TIMEOUT_SECONDS,
                              env={**os.environ, **(settings or {})})  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"realbench's setup.sh did not finish in {SETUP_TIMEOUT_SECONDS} s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"realbench's setup.sh failed ({done.returncode}):\n{done.stderr[-3000:]}", pytrace=False)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines() if line.startswith("export "))
    return RealBench({name: value.strip().strip("'\"") for name, value in exports.items()})


@pytest.fixture(scope="session")
def second_realbench(realbench) -> RealBench:
    """A second bench, for a second bench server on this machine: a folder, a MariaDB and two Redis
    of its own, beside the first's (its folder and ports, each one further on)."""
    first = realbench.exports
    return set_up_realbench({
        "REALBENCH_DIR": f"{first['REALBENCH_DIR']}-second",
        **{name: str(int(first[name]) + 1)
           for name in ("REALBENCH_DB_PORT", "REALBENCH_REDIS_CACHE_PORT", "REALBENCH_REDIS_QUEUE_PORT")},
    })  # fmt: skip


@contextmanager
def folders_of_bench_user(realbench: RealBench) -> Iterator[dict[str, Path]]:
    """BACKUP_PATH and the archive folder, the bench user's own (0700), in a folder it can pass
    through; removed afterwards."""
    outside = Path(tempfile.mkdtemp(prefix=f"realbench-{RUN_ID}-"))
    outside.chmod(0o711)
    folders = {}
    for name in ("backups", "archive"):
        folder = outside / name
        folder.mkdir(mode=0o700)
        os.chown(folder, realbench.user.pw_uid, realbench.user.pw_gid)
        folders[name] = folder
    yield folders
    shutil.rmtree(outside, ignore_errors=True)


@pytest.fixture
def bench_folders(realbench):
    with folders_of_bench_user(realbench) as folders:
        yield folders


@pytest.fixture
def real_environment(isolated, realbench, bench_folders) -> dict[str, str]:
    """A worker's settings for the real bench, its sites under a domain of this test's own."""
    return environment_of_bench(isolated, realbench, bench_folders, f"t{uuid.uuid4().hex[:8]}.real.test")


def environment_of_bench(isolated, realbench: RealBench, folders: dict[str, Path], domain: str) -> dict[str, str]:
    return {
        **isolated.environment,
        "SITE_DRIVER": "bench",
        "BENCH_PATH": str(realbench.path),
        "BENCH_EXECUTABLE": realbench.executable,
        "SITE_DOMAIN": domain,
        "DB_ROOT_USERNAME": realbench.exports["REALBENCH_DB_ROOT_USERNAME"],
        "DB_ROOT_PASSWORD": realbench.root_password,
        "BACKUP_PATH": str(folders["backups"]),
        "BENCH_ARCHIVE_PATH": str(folders["archive"]),
        "BENCH_STEP_TIMEOUT_SECONDS": "600",
        "SITE_APPS": "frappe",  # frappe alone (about 25 s a site); the test that needs ERPNext says so
    }


BROKEN_APP = "broken_app"
BROKEN_APP_FILES = {
    "__init__.py": '__version__ = "0.0.1"\n',
    "hooks.py": "\n".join([f'app_name = "{BROKEN_APP}"', 'app_title = "Broken App"', 'app_description = "Fails its install"',
                           'app_publisher = "tests"', 'app_email = "tests@example.test"', 'app_license = "MIT"',
                           f'after_install = "{BROKEN_APP}.install.after_install"', ""]),
    "install.py": 'def after_install():\n    raise RuntimeError("broken_app fails its after_install on purpose")\n',
    "modules.txt": "Broken App\n",
    "patches.txt": "",
}


@pytest.fixture
def broken_app(realbench):
    """An app in the bench whose after_install hook always fails, as ERPNext's did once on the
    reference bench; taken out of the bench again afterwards."""
    package = realbench.path / "apps" / BROKEN_APP / BROKEN_APP
    package.mkdir(parents=True)
    for name, text in BROKEN_APP_FILES.items():
        (package / name).write_text(text)
    (package / "broken_app").mkdir()  # the module folder modules.txt names
    (package / "broken_app" / "__init__.py").write_text("")
    site_packages = next((realbench.path / "env" / "lib").glob("python3*/site-packages"))
    path_file = site_packages / f"{BROKEN_APP}.pth"
    path_file.write_text(f"{package.parent}\n")
    apps_txt = realbench.path / "sites" / "apps.txt"
    listed = apps_txt.read_text()
    apps_txt.write_text(listed.rstrip("\n") + f"\n{BROKEN_APP}")
    subprocess.run(["chown", "-R", f"{realbench.user.pw_uid}:{realbench.user.pw_gid}", str(package.parent)], check=True)
    try:
        yield BROKEN_APP
    finally:
        apps_txt.write_text(listed)
        path_file.unlink()
        shutil.rmtree(package.parent)
