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

import gzip
import json
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

from provisioning.enums import JobType
from provisioning.errors import BackupUnrestorable, SiteUnchanged, StepFailed
from provisioning.platform.identifiers import SITE_NAME
from provisioning.platform.settings import BenchSettings
from provisioning.sites.credentials import generate_password
from provisioning.sites.drivers.base import BackupFile, StepContext
from provisioning.sites.drivers.bench_command import Command
from provisioning.sites.drivers.bench_config import BenchConfig

# "Database: ./acme.example.com/private/backups/20261130_010203-acme_example_com-database.sql.gz 1.3KiB"
BACKUP_LINE = re.compile(r"^(Config|Database|Public|Private)\s*:\s*(\S.*?)\s+\S+$")
BACKUP_KINDS = {"Config": "config", "Database": "database", "Public": "public_files", "Private": "private_files"}
# MariaDB's answer to a wrong password, as pymysql raises it in bench's traceback.
LOGIN_REFUSED = re.compile(r"\(1045, .Access denied for user")
# "CREATE TABLE `tabUser` (" in a mariadb-dump.
CREATE_TABLE = re.compile(rb"^CREATE TABLE `([^`]+)`")
# What `bench restore` says when the dump itself is bad, as real frappe 15 says it: refused before
# the import (no __Auth table, empty, not gzip), or an SQL error of the import (the mariadb client's
# 1xxx errors; its 2xxx ones, a lost connection say, are the database's, not the dump's).
BAD_DUMP = re.compile(
    r"Table `__Auth` not found in file|is an empty file!|Not a gzipped file|unexpected end of file"
    r"|ERROR 1\d{3} \(\w+\) at line \d+"
)


class RootLoginRefused(StepFailed):
    """The database refused bench's root login: the settings are wrong, not the site or the backup."""


def dump_tables(path: Path) -> set[str]:
    """The tables a gzip SQL dump makes."""
    with gzip.open(path, "rb") as stream:
        return {match.group(1).decode() for line in stream if (match := CREATE_TABLE.match(line))}


class BenchDriver:
    """Runs each step of every job type with bench; see the module docstring."""

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
        work = _SiteWork(BenchConfig.check(self.settings), context)
        if context.job_type == JobType.CREATE_SITE:
            return work.remove_half_made_site()
        if context.job_type == JobType.RESTORE_SITE:
            return work.put_back()
        if context.job_type == JobType.RESTORE_DRILL:
            return work.drop_scratch()
        return f"{context.job_type.value}: nothing to undo"


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

    def bench_as_root(self, *args: str, answers: tuple[str, ...] = ()) -> Command:
        """A bench command that logs in to the database as DB_ROOT_USERNAME, the root password
        its first answer; a refused login fails the step saying so in one line, not with
        pymysql's traceback (which stays in the step's output)."""
        try:
            return self.bench(*args, "--db-root-username", self.config.db_root_username,
                              answers=(self.config.db_root_password, *answers))  # fmt: skip
        except StepFailed as failure:
            if any(LOGIN_REFUSED.search(line) for line in failure.output.splitlines()):
                command = args[2] if args[0] == "--site" else args[0]
                raise RootLoginRefused(
                    f"the database refused the root login of `bench {command}`: check DB_ROOT_USERNAME "
                    f"({self.config.db_root_username}) and DB_ROOT_PASSWORD",
                    output=failure.output,
                ) from None
            raise

    def drop(self, archive: Path, force: bool = False, site: str | None = None) -> None:
        """``bench drop-site`` into ``archive``, never with bench's own backup: ours was taken and
        verified (or declined) in final_backup. ``force`` goes on past a database already gone.

        The archive folder is checked first: bench drops the database and its user before it
        moves the site's folder, and a folder it cannot write would leave the site half dropped.
        """
        if refusal := self.config.user.cannot_write(archive, "the archive folder"):
            raise refusal
        self.bench_as_root(
            "drop-site", site or self.site, "--archived-sites-path", str(archive), "--no-backup", *(["--force"] if force else [])
        )

    def output(self, summary: str) -> str:
        return "\n".join([*self._outputs, summary])

    def installed_apps(self, site: str | None = None) -> set[str] | None:
        """The apps of the site (this job's, or ``site``) as ``list-apps -f json`` lists them on
        stdout (a warning on stderr is never read as an app), or None when the site does not
        answer: missing, or half made. On a half-installed site list-apps exits 0 with nothing or
        a partial list: a site whose list lacks frappe itself is half made."""
        site = site or self.site
        if not (self.config.bench_path / "sites" / site / "site_config.json").is_file():
            return None
        command = self.bench("--site", site, "list-apps", "-f", "json", check=False)
        if command.exit_code != 0:
            return None
        # The JSON document (indented, over several lines) from its first line on: anything bench
        # printed before it is not part of it.
        start = next((number for number, line in enumerate(command.stdout) if line.startswith("{")), len(command.stdout))
        try:
            apps = json.loads("\n".join(command.stdout[start:]) or "{}").get(site)
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
        user = self.config.user
        for folder, what in ((self.context.backup_root, "BACKUP_PATH"), (self.config.archive_path, "the archive folder")):
            if refusal := user.cannot_write(folder, what):
                raise refusal
        if self.site_dir.exists():
            raise StepFailed(
                f"site {self.site} already exists in {self.config.bench_path / 'sites'}; a create never overwrites a "
                "site: delete it, or retry the failed create that made it (a retry cleans up and resumes)"
            )
        return self.output(
            f"bench {version.output.strip()}, running as {user.described}, can write BACKUP_PATH and the archive folder; "
            f"apps {', '.join(self.config.apps)} present; {self.site} is free"
        )

    def create_site(self) -> str:
        # check_preconditions found the name free, so a site here is one an earlier attempt of this
        # job made, and its listing cannot tell a finished site from one whose app install failed
        # (frappe lists an app before its after_install hooks run): it is dropped and made again.
        cleaned = self.remove_half_made_site() if self.site_dir.exists() else ""
        password = self.context.admin_password()
        apps = [arg for app in self.config.apps for arg in ("--install-app", app)]
        # Asked in this order: the root password (to make the database), then the admin password, twice.
        self.bench_as_root("new-site", self.site, *apps, answers=(password, password))
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
        self.drop_scratch()  # a drill cut short (its worker lost) left it: no copy outlives the site
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

    # restore_site

    def close_site(self) -> str:
        self._require_site_folder()
        self.bench("--site", self.site, "set-maintenance-mode", "on")
        return self.output(f"{self.site} is in maintenance mode")

    def safety_backup(self) -> str:
        return self.run_backup()

    def restore_site(self) -> str:
        self._require_site_folder()
        try:
            self.restore(self.site, self.context.backup_to_restore())
        except SiteUnchanged:
            self.reopen_site()  # nothing else to undo
            raise
        return self.output(f"restored {self.site}")

    def reopen_site(self) -> str:
        self.bench("--site", self.site, "set-maintenance-mode", "off")
        return self.output(f"{self.site} is open to its users")

    def _require_site_folder(self) -> None:
        """The site need not answer: one a restore left half done (a retry's) is restored again."""
        if not (self.site_dir / "site_config.json").is_file():
            raise StepFailed(f"site {self.site} is not in the bench: there is nothing to restore into")

    def migrate_site(self) -> str:
        self._require_site()
        self.bench("--site", self.site, "migrate")
        return self.output(f"{self.site} migrated")

    def restore(self, site: str, files: Sequence[BackupFile]) -> None:
        """``bench --site <site> restore`` of a backup's database and files (the root password on
        stdin): frappe drops the site's database, makes it again from the dump, and unpacks the files.

        Raises:
            SiteUnchanged: the root login was refused, which frappe asks for before it drops anything.
            BackupUnrestorable: bench said the dump itself is bad (``BAD_DUMP``).
            StepFailed: any other failure (a timeout, the database down): not the backup's fault.
        """
        paths = {file.kind: str(file.path) for file in files}
        public = ["--with-public-files", paths["public_files"]] if "public_files" in paths else []
        private = ["--with-private-files", paths["private_files"]] if "private_files" in paths else []
        try:
            self.bench_as_root("--site", site, "restore", paths["database"], *public, *private)
        except RootLoginRefused as refused:
            raise SiteUnchanged(str(refused), refused.output) from None
        except StepFailed as failure:
            if BAD_DUMP.search(failure.output):
                raise BackupUnrestorable(f"bench could not restore the backup into {site}: {failure}", failure.output) from None
            raise

    def put_back(self) -> str:
        """Undo a restore: once the restore started, the site restored from the safety backup the job
        took first, and migrated; then open to its users again."""
        if self.context.reached("restore_site"):
            files = self.context.safety_backup()
            if files is None:
                raise StepFailed(
                    f"no safety backup of {self.site} was taken (skip_safety_backup): it stays as the restore left it, "
                    "in maintenance mode"
                )
            self.restore(self.site, files)
            self.bench("--site", self.site, "migrate")
        self.reopen_site()
        return self.output(f"{self.site} put back as it was before the restore")

    # restore_drill

    @property
    def scratch(self) -> str:
        """The drill's scratch site: its own sub-domain, so no tenant's site can have its name."""
        return f"{self.context.tenant_slug}.drill.{self.config.site_domain}"

    def restore_scratch(self) -> str:
        """The backup restored into a scratch site, which must answer with every table of the dump;
        the scratch site is dropped whatever happens (a drill never leaves a copy of the
        tenant's data behind)."""
        if problem := SITE_NAME.problem("scratch site name", self.scratch):
            raise StepFailed(f"no scratch site for this tenant's drill: {problem}")
        files = self.context.backup_to_restore()
        self.drop_scratch()  # left by an earlier attempt that was cut short
        password = generate_password()
        try:
            self.bench_as_root("new-site", self.scratch, answers=(password, password))
            self.restore(self.scratch, files)
            tables = self._check_scratch(files)
        finally:
            # With a deadline of its own, and past a cancel or a worker stopping: what made this
            # step end (its timeout, say) must not stop the drop too.
            _SiteWork(self.config, self.context.unstoppable()).drop_scratch()
        return self.output(f"the backup restored into {self.scratch}, which answered with all {tables} tables of the dump")

    def drop_scratch(self) -> str:
        scratch_dir = self.config.bench_path / "sites" / self.scratch
        drills = self.config.archive_path / "drills"
        if scratch_dir.exists():
            self.drop(drills, force=True, site=self.scratch)
        for archived in drills.glob(f"{self.scratch}*") if drills.is_dir() else []:
            shutil.rmtree(archived)
        return self.output(f"{self.scratch}: dropped")

    def _check_scratch(self, files: Sequence[BackupFile]) -> int:
        database = next(file.path for file in files if file.kind == "database")
        if self.installed_apps(self.scratch) is None:
            raise BackupUnrestorable(f"the backup restored into {self.scratch}, which then did not answer", self.output(""))
        listed = self.bench("--site", self.scratch, "execute", "frappe.db.get_tables")
        start = next((number for number, line in enumerate(listed.stdout) if line.startswith("[")), len(listed.stdout))
        try:
            restored = set(json.loads("\n".join(listed.stdout[start:]) or "[]"))
        except json.JSONDecodeError:
            raise StepFailed(f"`execute frappe.db.get_tables` on {self.scratch} printed no list of tables", self.output(""))
        dumped = dump_tables(database)
        if missing := sorted(dumped - restored):
            raise BackupUnrestorable(
                f"{len(missing)} of the dump's {len(dumped)} tables are missing after the restore: {', '.join(missing[:5])}",
                self.output(""),
            )
        return len(dumped)

    # backup_site

    def run_backup(self) -> str:
        self._require_site()
        directory = self.context.backup_directory(owner=self.config.user.ids)
        if refusal := self.config.user.cannot_write(directory, "its backup folder"):
            raise refusal
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
