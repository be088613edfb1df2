"""A driver that only takes time, so the platform can be used and tested with no ERPNext at hand."""

import gzip
import json
import time

from provisioning.enums import JobType
from provisioning.errors import StepFailed, StepStopped, StepTerminated
from provisioning.sites import standby_steps
from provisioning.sites.drivers.base import BackupFile, StepContext

CANCEL_POLL_SECONDS = 0.05
BACKUP_STEPS = frozenset({"run_backup", "final_backup", "safety_backup", "move_backup"})
RESTORE_STEPS = frozenset({"restore_site", "restore_scratch", "restore_target"})
# The platform's check after a backup step (``jobs.workflows.VERIFY_BACKUP``), failed on request
# with a dump cut short.
VERIFY_BACKUP = "verify_backup"
STANDBY_STEPS = {
    "claim_standby": standby_steps.claim_standby,
    "drop_standbys": standby_steps.drop_standbys,
    "make_standbys": standby_steps.make_standbys,
}


class SimulatedDriver:
    """Each step lasts ``step_seconds``; the step named ``fail_step`` fails, to show failures on
    demand; with ``ignore_cancel`` a step does not stop for a cancel, as a hung command would
    not: only once it must (the cancel's grace period is over, the job was taken away), as a
    command killed by its driver.
    The platform's ``verify_backup`` is failed the way bench makes it fail: with a dump cut short.

    Backups are real, if tiny, files (a gzip SQL dump and the site config), so the platform's
    checks, records and retention work the same as with a real site. Standby sites take
    ``step_seconds`` each to make and to claim, and are made "with" ``apps`` (SITE_APPS): a change
    makes them stale; a ``fail_step`` of claim_standby makes claims fail, and creates fall back.
    """

    def __init__(self, step_seconds: float, fail_step: str | None = None, ignore_cancel: bool = False, apps: str = ""):
        self.step_seconds = step_seconds
        self.fail_step = fail_step
        self.ignore_cancel = ignore_cancel
        self.apps = apps

    def run_step(self, step: str, context: StepContext) -> str:
        if step in STANDBY_STEPS:
            return STANDBY_STEPS[step](SimulatedStandbySites(self, context), context)
        self.take_time(step, context)
        if step == self.fail_step:
            raise StepFailed(f"simulated failure of step {step} (SIMULATED_FAIL_STEP)", output=f"{step}: failing on request")
        if step == "create_site":
            context.admin_password()  # read as the bench driver does: it fails without a key
        if step in RESTORE_STEPS:
            restored = context.backup_to_restore()
            return f"{step}: simulated for {context.tenant_slug} from {', '.join(file.path.name for file in restored)}"
        if step in BACKUP_STEPS:
            cut_short = self.fail_step == VERIFY_BACKUP
            self._write_backup(context, complete=not cut_short)
            if cut_short:
                return f"{step}: simulated for {context.tenant_slug}, its dump cut short for {VERIFY_BACKUP} to fail on request"
        return f"{step}: simulated for {context.tenant_slug} in {self.step_seconds:g}s"

    def take_time(self, step: str, context: StepContext) -> None:
        """``step_seconds``, stopping as a command would for a cancel (unless ``ignore_cancel``) or when it must."""
        deadline = time.monotonic() + self.step_seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if reason := context.must_stop():
                raise StepTerminated(reason)
            if not self.ignore_cancel and context.should_stop():
                raise StepStopped(step)
            time.sleep(min(remaining, CANCEL_POLL_SECONDS))

    def clean_up(self, step: str, context: StepContext) -> str:
        return f"{step}: nothing half-done to clean up (simulated)"

    def undo(self, context: StepContext) -> str:
        if context.job_type == JobType.RESTORE_SITE:
            if not context.reached("restore_site"):
                return f"{context.tenant_slug} opened again, unchanged (simulated)"
            if context.safety_backup() is None:
                raise StepFailed(f"no safety backup of {context.tenant_slug} was taken (skip_safety_backup): "
                                 "it stays as the restore left it")  # fmt: skip
            return f"{context.tenant_slug} put back from its safety backup (simulated)"
        if context.job_type == JobType.MOVE_SITE:
            return f"{context.tenant_slug} opened again on its server (simulated)"
        if context.job_type == JobType.REFILL_POOL:
            return standby_steps.undo_pool_job(SimulatedStandbySites(self, context), context)
        return f"{context.job_type.value}: simulated clean-up for {context.tenant_slug}"

    @staticmethod
    def _write_backup(context: StepContext, complete: bool = True) -> None:
        directory = context.backup_directory()
        dump = directory / f"{context.tenant_slug}-database.sql.gz"
        with gzip.open(dump, "wt") as stream:
            stream.write(f"-- MariaDB dump (simulated)\nCREATE TABLE `tabSite` (`name` varchar(140));\n"
                         f"INSERT INTO `tabSite` VALUES ('{context.tenant_slug}');\n")  # fmt: skip
            if complete:
                stream.write("-- Dump completed\n")
        config = directory / f"{context.tenant_slug}-site_config_backup.json"
        config.write_text(json.dumps({"site": context.tenant_slug, "simulated": True}))
        context.record_backup(context.tenant_slug, [BackupFile("database", dump), BackupFile("config", config)])


class SimulatedStandbySites:
    """Standby sites that only take time (``standby_steps.StandbySites``)."""

    def __init__(self, driver: SimulatedDriver, context: StepContext):
        self.driver = driver
        self.context = context

    def fingerprint(self) -> str:
        return f"simulated; apps={self.driver.apps}"

    def make_standby(self, label: str) -> str:
        self.driver.take_time("make_standbys", self.context)
        return f"made {label} (simulated)"

    def drop_standby(self, label: str) -> str:
        return f"dropped {label} (simulated)"

    def rename_standby(self, label: str) -> str:
        self.driver.take_time("claim_standby", self.context)
        if self.driver.fail_step == "claim_standby":
            raise StepFailed("simulated failure of step claim_standby (SIMULATED_FAIL_STEP)")
        return f"{label} is now the site of {self.context.tenant_slug} (simulated)"
