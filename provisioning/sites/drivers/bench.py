"""The bench driver: each step runs Frappe's ``bench`` CLI on a bench directory.

Every step looks at what already exists before acting, so a step run twice (a retry, a
redelivered job) does no harm: ``bench new-site`` leaves its folder and database behind when
it fails without a terminal (frappe/frappe#25671), and the retry would then fail on "already
exists". Commands are argument lists, never shell strings; each runs in a process group of its
own, so a cancel or a timeout stops the whole tree (bench, mariadb-dump, gzip...).

The root and admin passwords are never on bench's command line, where every user of the host
sees them in ``ps`` and bench writes them to its ``logs/bench.log``: left out, they are asked for
by frappe's own prompts, which read them from bench's stdin (Python's getpass falls back to stdin
in a process without a terminal, and each command runs in a new session, without one). They are
also redacted from every output we keep or log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from provisioning.enums import JobType
from provisioning.errors import StepFailed, StepStopped, StepTerminated
from provisioning.platform.identifiers import APP_NAME, SITE_NAME
from provisioning.platform.settings import BenchSettings
from provisioning.sites.drivers.base import BackupFile, StepContext

log = logging.getLogger(__name__)

REDACTED = "********"
POLL_SECONDS = 0.2
TERMINATE_GRACE_SECONDS = 5.0
ERROR_LINES = 8
KEPT_LINES = 2000
# bench is killed if the worker process dies (SIGKILL, OOM) before it could stop it: util-linux's
# setpriv sets that up and then runs bench in its place (a preexec_fn could deadlock in a process
# with threads).
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--") if shutil.which("setpriv") else ()
# "Database: ./acme.example.com/private/backups/20261130_010203-acme_example_com-database.sql.gz 1.3KiB"
BACKUP_LINE = re.compile(r"^(Config|Database|Public|Private)\s*:\s*(\S.*?)\s+\S+$")
BACKUP_KINDS = {"Config": "config", "Database": "database", "Public": "public_files", "Private": "private_files"}


@dataclass(frozen=True)
class BenchConfig:
    """The bench settings, checked; built once per step so a fixed setting needs no worker restart."""

    bench_path: Path
    executable: str
    site_domain: str
    db_root_username: str
    db_root_password: str = field(repr=False)
    apps: tuple[str, ...]
    step_timeout: float
    archive_path: Path

    @classmethod
    def check(cls, settings: BenchSettings, need_apps: bool = False) -> "BenchConfig":
        """Raises StepFailed naming the setting that is missing or wrong."""
        if not settings.bench_path:
            raise StepFailed("BENCH_PATH is not set: it must name the bench directory (the one with sites/ and apps/)")
        bench_path = Path(settings.bench_path).expanduser().resolve()
        if not (bench_path / "sites").is_dir() or not (bench_path / "apps").is_dir():
            raise StepFailed(f"BENCH_PATH: {bench_path} is not a bench directory (it needs sites/ and apps/)")
        executable = shutil.which(settings.executable, path=os.environ.get("PATH"))
        if executable is None:
            raise StepFailed(f"BENCH_EXECUTABLE: {settings.executable!r} is not an executable file or on PATH")
        domain = settings.site_domain.lower()
        if not SITE_NAME.is_valid(f"site.{domain}"):
            raise StepFailed(
                f"SITE_DOMAIN: {settings.site_domain!r} is not a domain name (sites are <tenant slug>.<SITE_DOMAIN>)"
            )
        if not settings.db_root_password:
            raise StepFailed("DB_ROOT_PASSWORD is not set: bench would stop and prompt for it")
        apps = tuple(app for app in re.split(r"[,\s]+", settings.apps) if app)
        # Each goes to bench as an argument (`--install-app <app>`) and names a folder under apps/.
        if not_apps := [app for app in apps if not APP_NAME.is_valid(app)]:
            raise StepFailed(f"SITE_APPS: {', '.join(map(repr, not_apps))} must be {APP_NAME.rule}")
        missing = [app for app in apps if not (bench_path / "apps" / app).is_dir()] if need_apps else []
        if missing:
            raise StepFailed(f"SITE_APPS: {', '.join(missing)} not in {bench_path / 'apps'} (get them with `bench get-app`)")
        try:
            step_timeout = float(settings.step_timeout_seconds)
        except ValueError:
            step_timeout = 0
        if step_timeout <= 0:
            raise StepFailed(f"BENCH_STEP_TIMEOUT_SECONDS: {settings.step_timeout_seconds!r} is not a positive number of seconds")
        archive = Path(settings.archive_path).expanduser() if settings.archive_path else Path("archived/sites")
        return cls(
            bench_path=bench_path,
            executable=executable,
            site_domain=domain,
            db_root_username=settings.db_root_username,
            db_root_password=settings.db_root_password,
            apps=apps,
            step_timeout=step_timeout,
            archive_path=archive if archive.is_absolute() else bench_path / archive,
        )


class Command:
    """One bench command: runs it in its own process group, keeps the tail of its output with
    secrets redacted, and stops the group on a cancel, a timeout or any interruption."""

    def __init__(
        self, config: BenchConfig, args: list[str], answers: list[str], context: StepContext, deadline: float
    ):
        self.config = config
        self.args = args
        # The lines bench's password prompts read from stdin, in the order it asks.
        self.answers = answers
        self.secrets = [secret for secret in [config.db_root_password, *answers] if secret]
        self.context = context
        self.deadline = deadline
        self.lines: deque[str] = deque(maxlen=KEPT_LINES)  # stdout and stderr, as they came
        self.stdout: list[str] = []  # stdout alone, for a command whose answer is read
        self.exit_code: int | None = None

    @property
    def shown(self) -> str:
        return self.redact("bench " + " ".join(self.args))

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    @property
    def output(self) -> str:
        return self.redact("\n".join(self.lines))

    def run(self, check: bool = True) -> int:
        """Run to the end; returns the exit code.

        Raises:
            StepFailed: with ``check``, a non-zero exit, naming the code and the last lines; or a timeout.
            StepStopped: the job asked the step to stop (a cancel): the command's group is stopped.
            StepTerminated: the step must end now (see ``StepContext.must_stop``): the same, saying why.
        """
        log.info("job %s: running %s", self.context.job_id, self.shown)
        process = subprocess.Popen(
            [*DIE_WITH_PARENT, self.config.executable, *self.args],
            cwd=self.config.bench_path,
            # What bench asks for it reads from here; anything more it asks for meets the end of
            # the input and fails, rather than wait for a terminal there is none of.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        process.stdin.write("".join(f"{answer}\n" for answer in self.answers))
        process.stdin.close()
        readers = [
            threading.Thread(target=self._read, args=(process.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(process.stderr, None), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            while process.poll() is None:
                # Asked every POLL_SECONDS: a read of flags the heartbeat sets, no query.
                if self.context.should_stop():
                    self._stop_group(process)
                    if reason := self.context.must_stop():
                        raise StepTerminated(reason)
                    raise StepStopped(f"{self.shown} was stopped")
                if time.monotonic() >= self.deadline:
                    self._stop_group(process)
                    raise StepFailed(
                        f"`{self.shown}` timed out after {self.config.step_timeout:g}s (BENCH_STEP_TIMEOUT_SECONDS)",
                        output=self.output,
                    )
                time.sleep(POLL_SECONDS)
        finally:
            if process.poll() is None:  # interrupted from outside (Celery's soft time limit)
                self._stop_group(process)
            _signal_group(process.pid, signal.SIGKILL)  # children that outlived bench, had it exited by itself
            process.wait()
            for reader in readers:
                reader.join(timeout=TERMINATE_GRACE_SECONDS)
        self.exit_code = process.returncode
        if check and self.exit_code != 0:
            raise StepFailed(self.failure(self.exit_code), output=self.output)
        return self.exit_code

    def failure(self, exit_code: int) -> str:
        last = self.redact("\n".join(list(self.lines)[-ERROR_LINES:]))
        return f"`{self.shown}` exited with {exit_code}:\n{last}"

    def _read(self, stream, kept: list[str] | None) -> None:
        """Keep the stream's lines for the output shown (both streams), and in ``kept`` (stdout)."""
        for line in stream:
            line = line.rstrip("\n")
            self.lines.append(line)
            if kept is not None and len(kept) < KEPT_LINES:
                kept.append(line)

    def _stop_group(self, process: subprocess.Popen) -> None:
        """SIGTERM the whole group, give it a grace period, then SIGKILL what is left (once: a
        command that ignores SIGTERM costs one grace period, not one per place that stops it)."""
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=TERMINATE_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class BenchDriver:
    """Runs each step of the three job types with bench; see the module docstring."""

    def __init__(self, settings: BenchSettings):
        self.settings = settings

    def run_step(self, step: str, context: StepContext) -> str:
        config = BenchConfig.check(self.settings, need_apps=context.job_type == JobType.CREATE_SITE)
        work = _SiteWork(config, context)
        return getattr(work, step)()

    def clean_up(self, step: str, context: StepContext) -> str:
        work = _SiteWork(BenchConfig.check(self.settings), context)
        if step == "create_site":
            return work.remove_half_made_site()
        if step == "install_apps":
            return work.install_apps_again()
        if step == "drop_site" and work.site_dir.exists():
            work.drop(work.config.archive_path, force=True)
            return work.output(f"finished the interrupted drop of {work.site}")
        return f"{step}: nothing to clean up; the step checks what exists before acting"

    def undo(self, context: StepContext) -> str:
        if context.job_type != JobType.CREATE_SITE:
            return f"{context.job_type.value}: nothing to undo"
        return _SiteWork(BenchConfig.check(self.settings), context).remove_half_made_site()


class _SiteWork:
    """The steps themselves, for one site of one job; each method is named after its step."""

    def __init__(self, config: BenchConfig, context: StepContext):
        self.config = config
        self.context = context
        self.site = f"{context.tenant_slug}.{config.site_domain}"
        # The slug was checked when the tenant was made, but the name goes into bench's arguments
        # and paths: a tenant made before slugs were checked whole ("acme\n") must stop here.
        if problem := SITE_NAME.problem("site name", self.site):
            raise StepFailed(f"tenant slug {context.tenant_slug!r} cannot make a site name: {problem}")
        self.site_dir = config.bench_path / "sites" / self.site
        self.deadline = time.monotonic() + config.step_timeout
        self._outputs: list[str] = []

    def bench(self, *args: str, check: bool = True, answers: tuple[str, ...] = ()) -> Command:
        """Run bench with ``args``, its password prompts answered with ``answers`` on stdin."""
        command = Command(self.config, list(args), list(answers), self.context, self.deadline)
        try:
            command.run(check=check)
        finally:
            self._outputs.append(f"$ {command.shown}\n{command.output}".rstrip())
        return command

    def drop(self, archive: Path, force: bool = False) -> None:
        """``bench drop-site`` into ``archive``, never with bench's own backup: ours was taken and
        verified (or declined) in final_backup. ``force`` goes on past a database already gone."""
        self.bench(
            "drop-site", self.site, "--db-root-username", self.config.db_root_username, "--archived-sites-path", str(archive),
            "--no-backup", *(["--force"] if force else []), answers=(self.config.db_root_password,),
        )  # fmt: skip

    def output(self, summary: str) -> str:
        return "\n".join([*self._outputs, summary])

    def installed_apps(self) -> set[str] | None:
        """The site's apps as ``list-apps -f json`` lists them on stdout (a warning on stderr is
        never read as an app), or None when the site does not answer: missing, or half made. On a
        half-installed site list-apps exits 0 with nothing or a partial list: a site whose list
        lacks frappe itself is half made."""
        if not (self.site_dir / "site_config.json").is_file():
            return None
        command = self.bench("--site", self.site, "list-apps", "-f", "json", check=False)
        if command.exit_code != 0:
            return None
        try:
            apps = json.loads("\n".join(command.stdout) or "{}").get(self.site)
        except (json.JSONDecodeError, AttributeError):
            return None
        if not isinstance(apps, list) or "frappe" not in apps:
            return None
        return {app for app in apps if isinstance(app, str)}

    def missing_apps(self, installed: set[str]) -> list[str]:
        return [app for app in ("frappe", *self.config.apps) if app not in installed]

    # create_site

    def check_preconditions(self) -> str:
        version = self.bench("--version")
        if self.site_dir.exists():
            raise StepFailed(
                f"site {self.site} already exists in {self.config.bench_path / 'sites'}; a create never overwrites a "
                "site: delete it, or retry the failed create that made it (a retry cleans up and resumes)"
            )
        return self.output(f"bench {version.output.strip()}; apps {', '.join(self.config.apps)} present; {self.site} is free")

    def create_site(self) -> str:
        # check_preconditions found the name free, so a site here is one an earlier attempt of this
        # job made, and its listing cannot tell a finished site from one whose app install failed
        # (frappe lists an app before its after_install hooks run): it is dropped and made again.
        cleaned = self.remove_half_made_site() if self.site_dir.exists() else ""
        password = self.context.admin_password()
        apps = [arg for app in self.config.apps for arg in ("--install-app", app)]
        # Asked in this order: the root password (to make the database), then the admin password, twice.
        root = self.config.db_root_password
        self.bench("new-site", self.site, "--db-root-username", self.config.db_root_username, *apps,
                   answers=(root, password, password))  # fmt: skip
        return self.output(f"{cleaned}created {self.site}".strip())

    def install_apps(self) -> str:
        missing = self.missing_apps(self._require_site())
        if missing:
            self.bench("--site", self.site, "install-app", *missing)
        return self.output(f"installed: {', '.join(missing) or 'nothing, all were'}; apps: {', '.join(self.config.apps)}")

    def install_apps_again(self) -> str:
        """After an install that failed or was cut short: every app of SITE_APPS installed again,
        its hooks included (``--force``). frappe lists an app before its after_install hooks
        run, so a listing cannot say whether an install finished; an exit code can."""
        self._require_site()
        if self.config.apps:
            self.bench("--site", self.site, "install-app", "--force", *self.config.apps)
        return self.output(f"installed again: {', '.join(self.config.apps) or 'nothing, no SITE_APPS'}")

    def configure_site(self) -> str:
        self._require_site()
        self.bench("--site", self.site, "set-config", "host_name", f"https://{self.site}")
        self.bench("--site", self.site, "enable-scheduler")
        return self.output(f"{self.site}: host_name set, scheduler enabled")

    def verify_site(self) -> str:
        installed = self._require_site()
        if missing := self.missing_apps(installed):
            raise StepFailed(f"{self.site} answers but lacks {', '.join(missing)}", output=self.output(""))
        return self.output(f"{self.site} answers with apps {', '.join(sorted(installed))}")

    def remove_half_made_site(self) -> str:
        """Drop what a create left: the site with its database, or a bare folder that never got one."""
        if not self.site_dir.exists():
            return self.output(f"{self.site}: nothing to remove")
        if (self.site_dir / "site_config.json").is_file():
            self.drop(self.config.archive_path / "discarded", force=True)
        if self.site_dir.exists():
            shutil.rmtree(self.site_dir)
        return self.output(f"removed the half-made site {self.site}")

    # delete_site

    def check_site(self) -> str:
        if self.site_dir.exists():
            return self.output(f"{self.site} is in the bench")
        if not self.context.options.get("skip_final_backup"):
            raise StepFailed(
                f"site {self.site} is not in the bench, so no final backup can be taken; "
                "ask for delete_site with skip_final_backup to record the tenant as deleted"
            )
        return self.output(f"{self.site} is not in the bench; nothing to drop")

    def final_backup(self) -> str:
        return self.run_backup()

    def drop_site(self) -> str:
        if not self.site_dir.exists():
            return self.output(f"{self.site} is not in the bench any more; nothing to drop")
        self.drop(self.config.archive_path)
        return self.output(f"dropped {self.site}")

    def archive_site(self) -> str:
        if self.site_dir.exists():
            raise StepFailed(f"{self.site} is still in {self.site_dir.parent} after drop-site")
        archived = sorted(self.config.archive_path.glob(f"{self.site}*")) if self.config.archive_path.is_dir() else []
        where = ", ".join(str(path) for path in archived) or "no archived copy (the site was not in the bench)"
        return self.output(f"{self.site} archived: {where}")

    # backup_site

    def run_backup(self) -> str:
        self._require_site()
        directory = self.context.backup_directory()
        command = self.bench("--site", self.site, "backup", "--with-files", "--compress", "--backup-path", str(directory))
        files = self._backup_files(command)
        self.context.record_backup(self.site, files)
        return self.output(f"backup of {self.site}: {', '.join(file.path.name for file in files)}")

    def _backup_files(self, command: Command) -> list[BackupFile]:
        """The files as the command named them: never "the newest file in the folder"."""
        files = []
        for line in command.lines:
            match = BACKUP_LINE.match(line.strip())
            if match:
                path = Path(match.group(2))
                files.append(
                    BackupFile(BACKUP_KINDS[match.group(1)], path if path.is_absolute() else self.site_dir.parent / path)
                )
        if not any(file.kind == "database" for file in files):
            raise StepFailed("bench backup exited 0 but named no database dump in its summary", output=command.output)
        return files

    def _require_site(self) -> set[str]:
        installed = self.installed_apps()
        if installed is None:
            raise StepFailed(
                f"site {self.site} is not in the bench, does not answer `bench --site {self.site} list-apps`, or is half made "
                "(frappe itself is not installed)"
            )
        return installed
