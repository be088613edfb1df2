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

from provisioning.enums import SUSPENSIONS, JobType
from provisioning.errors import StepFailed
from provisioning.platform.settings import BenchSettings
from provisioning.sites.drivers.base import StepContext
from provisioning.sites.drivers.bench_config import BenchConfig
from provisioning.sites.drivers.bench_move import MoveSteps
from provisioning.sites.drivers.bench_restore import RestoreSteps
from provisioning.sites.drivers.bench_site import SiteWork
from provisioning.sites.drivers.bench_standby import BenchStandbySites
from provisioning.sites.drivers.bench_suspension import SuspensionSteps

# The job types whose sites get every app of SITE_APPS: a missing one fails their first step.
MAKE_SITES = frozenset({JobType.CREATE_SITE, JobType.REFILL_POOL})


class BenchDriver:
    """Runs each step of every job type with bench; see the module docstring."""

    def __init__(self, settings: BenchSettings):
        self.settings = settings

    def run_step(self, step: str, context: StepContext) -> str:
        config = BenchConfig.check(self.settings, need_apps=context.job_type in MAKE_SITES)
        return getattr(self._steps_of(context)(config, context), step)()

    @staticmethod
    def _steps_of(context: StepContext) -> type[SiteWork]:
        if context.job_type == JobType.MOVE_SITE:
            return MoveSteps
        if context.job_type == JobType.REFILL_POOL:
            return BenchStandbySites
        if context.job_type in SUSPENSIONS:
            return SuspensionSteps
        return RestoreSteps if context.job_type in (JobType.RESTORE_SITE, JobType.RESTORE_DRILL) else SiteSteps

    def clean_up(self, step: str, context: StepContext) -> str:
        work = SiteSteps(BenchConfig.check(self.settings), context)
        if step == "create_site":
            return work.remove_half_made_site()
        if step == "install_apps":
            return work.install_apps_again()
        if step == "drop_site" and work.site_dir.exists():
            work.drop(work.config.archive_path, force=True)
            return work.output(f"finished the interrupted drop of {work.site}")
        return f"{step}: nothing to clean up; the step checks what exists before acting"

    def undo(self, context: StepContext) -> str:
        work = self._steps_of(context)(BenchConfig.check(self.settings), context)
        if context.job_type == JobType.CREATE_SITE:
            return work.remove_half_made_site()
        if context.job_type == JobType.RESTORE_SITE:
            return work.put_back()
        if context.job_type == JobType.RESTORE_DRILL:
            return work.drop_scratch()
        if context.job_type == JobType.MOVE_SITE:
            # Cancelled before it went to the new server (a move cannot be stopped after): open the site again.
            return work.reopen_site()
        if context.job_type == JobType.REFILL_POOL:
            return work.undo_pool_job()
        if context.job_type in SUSPENSIONS:
            return work.undo()
        return f"{context.job_type.value}: nothing to undo"


class SiteSteps(BenchStandbySites):
    """The steps of create_site (its claim of a standby site among them), delete_site and
    backup_site, each method named after its step."""

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

    def remove_half_made_site(self) -> str:
        """Drop what a create left: the site with its database, or a bare folder that never got one."""
        if not self.site_dir.exists():
            return self.output(f"{self.site}: nothing to remove")
        self.remove(self.site, self.config.archive_path / "discarded")
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
