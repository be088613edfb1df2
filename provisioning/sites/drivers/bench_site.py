"""One site of one job on a bench: the commands the bench driver's steps are made of.

``SiteWork`` runs bench for the site (its passwords on stdin, see ``bench_command``), and holds
what several job types share: dropping a site, listing its apps, verifying it, backing it up,
and the restore drill's scratch site, which a delete drops too. The steps themselves are in
``bench`` (create, delete, backup), ``bench_restore`` (restore, drill) and ``bench_suspension``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from provisioning.errors import StepFailed
from provisioning.platform.identifiers import SITE_NAME
from provisioning.sites.drivers.base import BackupFile, StepContext
from provisioning.sites.drivers.bench_command import Command
from provisioning.sites.drivers.bench_config import BenchConfig

# "Database: ./acme.example.com/private/backups/20261130_010203-acme_example_com-database.sql.gz 1.3KiB"
BACKUP_LINE = re.compile(r"^(Config|Database|Public|Private)\s*:\s*(\S.*?)\s+\S+$")
BACKUP_KINDS = {"Config": "config", "Database": "database", "Public": "public_files", "Private": "private_files"}
# MariaDB's answer to a wrong password, as pymysql raises it in bench's traceback.
LOGIN_REFUSED = re.compile(r"\(1045, .Access denied for user")


class RootLoginRefused(StepFailed):
    """The database refused bench's root login: the settings are wrong, not the site or the backup."""


def json_document(lines: list[str], opener: str) -> object:
    """The JSON document bench printed (indented, over several lines) from its first line that
    starts with ``opener`` on: anything printed before it is not part of it. None if it printed none.

    Raises:
        ValueError: what follows that line is not JSON.
    """
    start = next((number for number, line in enumerate(lines) if line.startswith(opener)), len(lines))
    return json.loads("\n".join(lines[start:])) if start < len(lines) else None


class SiteWork:
    """The site of one job, and the commands its steps run; the steps are methods of subclasses,
    each named after its step."""

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

    def remove(self, site: str, archive: Path, keep_archived: bool = True) -> None:
        """Drop ``site`` with its database into ``archive``, or remove the bare folder a new-site
        cut short left (no config: no database to drop); without ``keep_archived``, its archived
        copies go too (a site that held nobody's data: a drill's scratch site, a standby site)."""
        folder = self.config.bench_path / "sites" / site
        if (folder / "site_config.json").is_file():
            self.drop(archive, force=True, site=site)
        if folder.exists():
            shutil.rmtree(folder)
        for archived in archive.glob(f"{site}*") if not keep_archived and archive.is_dir() else []:
            shutil.rmtree(archived)

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
        try:
            listed = json_document(command.stdout, "{")
        except ValueError:
            return None
        apps = listed.get(site) if isinstance(listed, dict) else None
        if not isinstance(apps, list) or "frappe" not in apps:
            return None
        return {app for app in apps if isinstance(app, str)}

    def missing_apps(self, installed: set[str]) -> list[str]:
        return [app for app in ("frappe", *self.config.apps) if app not in installed]

    def verify_site(self) -> str:
        installed = self._require_site()
        if missing := self.missing_apps(installed):
            raise StepFailed(f"{self.site} answers but lacks {', '.join(missing)}", output=self.output(""))
        return self.output(f"{self.site} answers with apps {', '.join(sorted(installed))}")

    def close_site(self) -> str:
        """Maintenance mode on: frappe answers the site's users with its maintenance page, and its
        scheduler runs nothing for the site (``bench_suspension``)."""
        self._require_site_folder()
        self.bench("--site", self.site, "set-maintenance-mode", "on")
        return self.output(f"{self.site} is in maintenance mode")

    def reopen_site(self) -> str:
        self.bench("--site", self.site, "set-maintenance-mode", "off")
        return self.output(f"{self.site} is open to its users")

    def _require_site_folder(self) -> None:
        """The site need not answer (one a restore left half done is restored again), only be there:
        maintenance mode is a line of its site_config.json."""
        if not (self.site_dir / "site_config.json").is_file():
            raise StepFailed(f"site {self.site} is not in the bench (it has no site_config.json)")

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

    @property
    def scratch(self) -> str:
        """The drill's scratch site: its own sub-domain, so no tenant's site can have its name."""
        return f"{self.context.tenant_slug}.drill.{self.config.site_domain}"

    def drop_scratch(self) -> str:
        self.remove(self.scratch, self.config.archive_path / "drills", keep_archived=False)
        return self.output(f"{self.scratch}: dropped")
