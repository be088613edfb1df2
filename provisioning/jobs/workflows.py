"""What each job type does: its steps, the tenant states it needs, and where it leaves the tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from provisioning.enums import JobType, TenantStatus
from provisioning.platform.settings import Settings, SettingsError


@dataclass(frozen=True)
class Step:
    """One named step. ``by_platform`` steps are the service's own work (checking and keeping
    backups), the rest are the site driver's. ``skipped_when`` names a job option that, when
    true, skips the step, ``skipped_unless`` one that, when missing, does. A retry of a job that
    failed here starts again at ``redo_from`` when set: a failed check cannot be fixed by checking
    the same files again. A step of a job that spans servers (a move) ``runs_on`` one of them
    (``SOURCE`` or ``TARGET``, see ``server_of``), and only that server's worker runs it; other
    steps run wherever the job is.
    """

    name: str
    message: str
    by_platform: bool = False
    skipped_when: str | None = None
    skipped_unless: str | None = None
    redo_from: str | None = None
    runs_on: str | None = None


@dataclass(frozen=True)
class Workflow:
    """The plan of one job type.

    ``tenant_*`` fields say where the tenant goes when the job starts, completes, fails or is
    cancelled; ``None`` leaves it as it is, except on cancel, where ``None`` puts the tenant
    back in the status it had when the job started. A failure before ``changes_from`` (the first
    step that changes the site) left the site as it was, so the tenant goes back too.

    ``point_of_no_return`` is the step whose work a cancel cannot take back: once it starts it
    runs to its end whatever a cancel says (half done, it could be neither kept nor undone), and
    once it has completed, a cancel undoes nothing: the tenant ends as if the job had completed,
    and the job says what stands: ``cannot_undo``, and the backup it took, if it kept one. A job
    that ``needs_admin_password`` makes the site: its claim stores the site's admin password (see
    ``JobExecution.start_job``). A job that ``undoes_failures`` has the driver undo what it changed
    when a driver's step fails from ``changes_from`` on, as when it is cancelled (a restore puts
    the site back from its safety backup, a drill drops its scratch site); the text says what that
    leaves, for the job's error. The site is then whole again: the tenant goes where a success
    would have put it. Its retry starts over (see ``JobRequests._resume_point``). From
    ``no_cancel_from`` on, a cancel is refused: the job has handed its work to another server, whose
    part is undone by going on, not back.
    """

    job_type: JobType
    steps: tuple[Step, ...]
    allowed_tenant_states: frozenset[TenantStatus]
    refusal: str
    tenant_on_start: TenantStatus | None = None
    tenant_on_success: TenantStatus | None = None
    tenant_on_failure: TenantStatus | None = None
    tenant_on_cancel: TenantStatus | None = None
    changes_from: str | None = None
    point_of_no_return: str | None = None
    cannot_undo: str = ""
    needs_admin_password: bool = False
    undoes_failures: str = ""
    no_cancel_from: str | None = None

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps)

    def position_of(self, step_name: str) -> int:
        return self.step_names.index(step_name)

    def resume_point(self, failed_step: str) -> str:
        """The step a retry of a job that failed in ``failed_step`` starts at."""
        return self.steps[self.position_of(failed_step)].redo_from or failed_step

    def allows(self, tenant_status: TenantStatus) -> bool:
        return tenant_status in self.allowed_tenant_states

    def refusal_for(self, tenant_status: TenantStatus | None) -> str:
        """Why a tenant in ``tenant_status`` cannot have this job: a suspended tenant is told what
        it may still have, whatever the job, rather than what this job would need."""
        if tenant_status in SUSPENSION_REFUSALS and not self.allows(tenant_status):
            return SUSPENSION_REFUSALS[tenant_status]
        return self.refusal

    @staticmethod
    def skips(step: Step, options: Mapping[str, object]) -> str | None:
        """Why a job with these options skips the step (``Step.skipped_when``, ``skipped_unless``);
        None: it runs it."""
        if step.skipped_when and options.get(step.skipped_when):
            return SKIP_REASONS.get(step.skipped_when, f"the job asked for {step.skipped_when}")
        if step.skipped_unless and not options.get(step.skipped_unless):
            return SKIP_REASONS_UNLESS[step.skipped_unless]
        return None

    def progress_after(self, completed_steps: int) -> int:
        """Whole percent done once ``completed_steps`` steps have finished."""
        return (100 * completed_steps) // len(self.steps)

    def tenant_after_failure(self, failed_step: str | None, before: TenantStatus | None) -> TenantStatus | None:
        """Where the tenant goes when the job fails in ``failed_step`` (None: not in a step).

        A failure before ``changes_from`` left the site as it was, so the tenant goes back to
        the status it had; otherwise the site's state is unknown and it is failed.
        """
        if self.changes_from and failed_step in self.step_names:
            if self.position_of(failed_step) < self.position_of(self.changes_from):
                return before
        return self.tenant_on_failure

    def changed_the_site(self, reached: list[str]) -> bool:
        """Whether a job that started ``reached`` steps may have changed the site: it started the
        step ``changes_from`` or one after it (``changes_from`` may have been skipped)."""
        if self.changes_from is None:
            return True
        return any(self.position_of(step) >= self.position_of(self.changes_from) for step in reached)

    def tenant_after_cancel(self, completed_steps: list[str], before: TenantStatus | None) -> TenantStatus | None:
        """Where the tenant goes when a cancel stops the job after ``completed_steps``."""
        if self.point_of_no_return in completed_steps:
            return self.tenant_on_success
        return self.tenant_on_cancel or before


# Where a move's steps run: the server the site is on when the move is asked for, and the one it
# moves to, named by the job's options (``server_of``).
SOURCE, TARGET = "from_server", "server"
# The move_site steps that are the site driver's, as the drivers know them.
MOVE_RESTORE, MOVE_DROP = "restore_target", "drop_source"


def server_of(step: Step, options: Mapping[str, object]) -> str | None:
    """The name of the server whose worker runs ``step`` of a job with ``options``; None: any."""
    return str(options[step.runs_on]) if step.runs_on else None


# The delete_site option that drops the site without taking a final backup first.
SKIP_FINAL_BACKUP = "skip_final_backup"
# The restore_site option that restores without a safety backup of the site as it is.
SKIP_SAFETY_BACKUP = "skip_safety_backup"
# The create_site option naming the standby site reserved for it (``servers.standby``): its claim
# replaces the steps that make a site. A claim that fails removes it, and those steps run.
STANDBY = "standby"
CLAIM_STANDBY = "claim_standby"
SKIP_REASONS = {STANDBY: "the site is the standby site claimed by claim_standby"}
SKIP_REASONS_UNLESS = {STANDBY: "no standby site to claim (none was ready, or its claim failed): the site is made"}
# The platform's check of a backup's files (the simulated driver can be told to make it fail).
VERIFY_BACKUP = "verify_backup"
# The platform's copy of a verified backup to offsite storage (backups/offsite.py), and a move's
# switch of the tenant to its new server.
COPY_OFFSITE = "copy_offsite"
SWITCH_SERVER = "switch_server"

# What a suspended (or half suspended) tenant is told when it asks for any job but those it may have.
SUSPENSION_REFUSALS = {
    TenantStatus.SUSPENDED: "the tenant is suspended (e.g. for an unpaid invoice); only backup_site, delete_site and "
    "unsuspend_site are allowed until unsuspend_site",
    TenantStatus.HALF_SUSPENDED: "the tenant is half suspended (a suspend_site or unsuspend_site failed half-way); only "
    "backup_site, delete_site, suspend_site and unsuspend_site are allowed until one of the last two completes",
}
# Where a tenant with a site may be backed up or deleted: its data matters whether or not it is open.
HAS_A_SITE = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.HALF_SUSPENDED})

WORKFLOWS: dict[JobType, Workflow] = {
    JobType.CREATE_SITE: Workflow(
        job_type=JobType.CREATE_SITE,
        steps=(
            Step("check_preconditions", "Checking that the site can be created"),
            # A ready standby site, renamed to the tenant's: seconds, where the four steps after it take a minute.
            Step(CLAIM_STANDBY, "Claiming a ready standby site", skipped_unless=STANDBY),
            Step("create_site", "Creating the site and its database", skipped_when=STANDBY),
            Step("install_apps", "Installing ERPNext", skipped_when=STANDBY),
            Step("configure_site", "Configuring the site", skipped_when=STANDBY),
            Step("verify_site", "Checking that the site answers", skipped_when=STANDBY),
        ),
        allowed_tenant_states=frozenset({TenantStatus.PENDING, TenantStatus.FAILED}),
        refusal="the tenant already has a site or is being changed; create_site needs a pending or failed tenant",
        tenant_on_start=TenantStatus.PROVISIONING,
        tenant_on_success=TenantStatus.ACTIVE,
        tenant_on_failure=TenantStatus.FAILED,
        tenant_on_cancel=TenantStatus.PENDING,
        # A claim renames a standby site to the tenant's: cut short, the tenant may have half a site.
        changes_from=CLAIM_STANDBY,
        needs_admin_password=True,
    ),
    JobType.DELETE_SITE: Workflow(
        job_type=JobType.DELETE_SITE,
        steps=(
            Step("check_site", "Checking the site before deletion"),
            Step("final_backup", "Taking a final backup", skipped_when=SKIP_FINAL_BACKUP),
            Step(
                VERIFY_BACKUP,
                "Verifying the final backup",
                by_platform=True,
                skipped_when=SKIP_FINAL_BACKUP,
                redo_from="final_backup",
            ),
            # Before the site is dropped: its final backup must not depend on one server's disk.
            Step(COPY_OFFSITE, "Copying the final backup to offsite storage", by_platform=True, skipped_when=SKIP_FINAL_BACKUP),
            Step("drop_site", "Dropping the site and its database"),
            Step("archive_site", "Checking that the site is archived"),
        ),
        # A suspended tenant too: billing may close an account for good. A failure before drop_site
        # leaves it suspended (as it was), as for any failure there.
        allowed_tenant_states=HAS_A_SITE | {TenantStatus.FAILED},
        refusal="the tenant has no site to delete; delete_site needs an active, suspended or failed tenant",
        tenant_on_start=TenantStatus.DELETING,
        tenant_on_success=TenantStatus.DELETED,
        tenant_on_failure=TenantStatus.FAILED,
        changes_from="drop_site",
        point_of_no_return="drop_site",
        cannot_undo="the site is dropped",
    ),
    JobType.BACKUP_SITE: Workflow(
        job_type=JobType.BACKUP_SITE,
        steps=(
            Step("run_backup", "Backing up the database and files"),
            Step(VERIFY_BACKUP, "Verifying the backup", by_platform=True, redo_from="run_backup"),
            # Off (no OFFSITE_S3_BUCKET), it completes saying the backup is kept on this server only.
            Step(COPY_OFFSITE, "Copying the backup to offsite storage", by_platform=True),
            Step("record_backup", "Recording the backup and pruning old ones", by_platform=True),
        ),
        # A suspended tenant's data matters all the same; the backup leaves the tenant as it is.
        allowed_tenant_states=HAS_A_SITE,
        refusal="the tenant has no active site to back up; backup_site needs an active or suspended tenant",
        # Retention prunes older backups on the strength of the new one: it can no longer be discarded.
        point_of_no_return="record_backup",
    ),
    JobType.RESTORE_SITE: Workflow(
        job_type=JobType.RESTORE_SITE,
        steps=(
            Step("check_backup", "Checking the backup to restore", by_platform=True),
            # Closed first: what users write after the safety backup would be lost with a put-back.
            Step("close_site", "Closing the site to its users (maintenance mode)"),
            Step("safety_backup", "Taking a safety backup of the site as it is", skipped_when=SKIP_SAFETY_BACKUP),
            Step(
                VERIFY_BACKUP,
                "Verifying the safety backup",
                by_platform=True,
                skipped_when=SKIP_SAFETY_BACKUP,
                redo_from="safety_backup",
            ),
            Step("restore_site", "Restoring the database and files"),
            # A failure here that could not be undone (or a worker lost here) left the site half
            # restored: its retry restores again, from the safety backup it kept.
            Step("migrate_site", "Migrating the restored site to the bench's apps", redo_from="restore_site"),
            Step("verify_site", "Checking that the site answers", redo_from="restore_site"),
            Step("reopen_site", "Opening the site to its users again"),
            Step("prove_backup", "Recording that the backup restores", by_platform=True),
        ),
        # A failed tenant too: a restore cut short (its worker stopped or lost) left its site half
        # restored, and its retry, or another restore, is what brings it back.
        allowed_tenant_states=frozenset({TenantStatus.ACTIVE, TenantStatus.FAILED}),
        refusal="the tenant has no site to restore into; restore_site needs an active or failed tenant",
        tenant_on_start=TenantStatus.RESTORING,
        tenant_on_success=TenantStatus.ACTIVE,
        tenant_on_failure=TenantStatus.FAILED,
        changes_from="close_site",
        point_of_no_return="prove_backup",
        cannot_undo="the backup is restored",
        undoes_failures="the site was put back as it was before the job",
    ),
    JobType.RESTORE_DRILL: Workflow(
        job_type=JobType.RESTORE_DRILL,
        steps=(
            Step("check_backup", "Checking the backup to restore", by_platform=True),
            Step("restore_scratch", "Restoring the backup into a scratch site, checking it, dropping it"),
            Step("prove_backup", "Recording that the backup restores", by_platform=True),
        ),
        allowed_tenant_states=frozenset({TenantStatus.ACTIVE}),
        refusal="the tenant has no active site whose backups to drill; restore_drill needs an active tenant",
        # The tenant's own site is never touched: only a scratch site of the drill's own.
        changes_from="restore_scratch",
        undoes_failures="its scratch site was dropped",
    ),
    JobType.MOVE_SITE: Workflow(
        job_type=JobType.MOVE_SITE,
        steps=(
            # Closed first: what users write after the backup would not reach the new server.
            Step("close_site", "Closing the site to its users on its server", runs_on=SOURCE),
            Step("move_backup", "Backing up the site on its server", runs_on=SOURCE),
            Step(VERIFY_BACKUP, "Verifying the backup", by_platform=True, redo_from="move_backup"),
            Step(COPY_OFFSITE, "Copying the backup to offsite storage", by_platform=True),
            Step(MOVE_RESTORE, "Restoring the site on the new server from the offsite copy", runs_on=TARGET),
            Step("verify_target", "Checking that the site answers on the new server", runs_on=TARGET),
            Step(SWITCH_SERVER, "Switching the tenant to the new server", by_platform=True),
            Step(MOVE_DROP, "Dropping the site from its old server", runs_on=SOURCE),
        ),
        # A failed tenant too: a move that failed part-way is finished by its retry.
        allowed_tenant_states=frozenset({TenantStatus.ACTIVE, TenantStatus.FAILED}),
        refusal="the tenant has no site to move; move_site needs an active or failed tenant",
        tenant_on_start=TenantStatus.MOVING,
        tenant_on_success=TenantStatus.ACTIVE,
        tenant_on_failure=TenantStatus.FAILED,
        changes_from="close_site",
        point_of_no_return=SWITCH_SERVER,
        cannot_undo="the site moved",
        no_cancel_from=MOVE_RESTORE,
    ),
    JobType.REFILL_POOL: Workflow(
        job_type=JobType.REFILL_POOL,
        steps=(
            Step("drop_standbys", "Dropping stale, half-made and surplus standby sites"),
            Step("make_standbys", "Making standby sites"),
        ),
        allowed_tenant_states=frozenset({TenantStatus.POOL}),
        refusal="refill_pool is a job of a server's standby pool, asked for by the sweeper",
    ),
    # suspend_site and unsuspend_site (``enums.SUSPENSIONS``): billing's decision, so only platform
    # operators ask for them, retry or cancel them (an owner who could would lift a suspension).
    #
    # What a failure leaves. Both jobs change the site from their first step, and every step only sets
    # a state (maintenance mode on or off, the scheduler enabled or disabled), so running one again is
    # harmless. A job that fails, or whose worker is lost, leaves the tenant ``half_suspended``: its
    # site may be closed, open, or in between, and the status says so. That status refuses every job
    # but backup_site, delete_site, suspend_site and unsuspend_site, so nothing (a restore reopening
    # the site, a move) can act on a half-closed site; the failed job's retry, or the opposite job,
    # finishes it and the tenant ends ``suspended`` or ``active``, as the site then is. A cancel undoes
    # what the job did (the site is opened again, or closed again) and puts the tenant back as it was
    # (``half_suspended`` if the undo fails).
    # Nothing is undone on a failure: the undo would run the same bench commands that just failed.
    JobType.SUSPEND_SITE: Workflow(
        job_type=JobType.SUSPEND_SITE,
        steps=(
            # First: a site in maintenance mode shows its users the maintenance page, and frappe's
            # scheduler runs nothing for it, so from here on the site is closed in effect.
            Step("close_site", "Showing the maintenance page to the site's users (maintenance mode)"),
            # So the scheduler stays stopped even should maintenance mode be turned off by hand.
            Step("disable_scheduler", "Stopping the site's scheduled jobs"),
            Step("verify_suspended", "Checking that the site is closed and its scheduler stopped"),
        ),
        allowed_tenant_states=frozenset({TenantStatus.ACTIVE, TenantStatus.HALF_SUSPENDED}),
        refusal="suspend_site needs an active tenant, or one a suspend or unsuspend left half suspended",
        tenant_on_success=TenantStatus.SUSPENDED,
        tenant_on_failure=TenantStatus.HALF_SUSPENDED,
        changes_from="close_site",
    ),
    JobType.UNSUSPEND_SITE: Workflow(
        job_type=JobType.UNSUSPEND_SITE,
        steps=(
            # While the site is in maintenance mode the scheduler still runs nothing: the site opens
            # to its users and its jobs at once, in the last step that changes it.
            Step("enable_scheduler", "Enabling the site's scheduled jobs"),
            Step("reopen_site", "Opening the site to its users again (maintenance mode off)"),
            Step("verify_open", "Checking that the site answers and its scheduler runs"),
        ),
        allowed_tenant_states=frozenset({TenantStatus.SUSPENDED, TenantStatus.HALF_SUSPENDED}),
        refusal="the tenant is not suspended; unsuspend_site needs a suspended or half suspended tenant",
        tenant_on_success=TenantStatus.ACTIVE,
        tenant_on_failure=TenantStatus.HALF_SUSPENDED,
        changes_from="enable_scheduler",
    ),
}

# The job types that restore one of the tenant's completed backups, named by ``backups.book.BACKUP_ID``.
RESTORES = frozenset({JobType.RESTORE_SITE, JobType.RESTORE_DRILL})


def workflow_for(job_type: JobType) -> Workflow:
    return WORKFLOWS[job_type]


def driver_step_names() -> frozenset[str]:
    return frozenset(step.name for workflow in WORKFLOWS.values() for step in workflow.steps if not step.by_platform)


def check_simulated_fail_step(settings: Settings) -> None:
    """The worker's check of SIMULATED_FAIL_STEP as it starts (settings know no steps): a driver's
    step, or the platform's verify_backup, which then fails for real on the dump the simulated
    driver cuts short; the platform's own bookkeeping (record_backup) cannot be failed on request.

    Raises:
        SettingsError: the step is none of those; the message names the variable.
    """
    failable = driver_step_names() | {VERIFY_BACKUP}
    if settings.simulated_fail_step is not None and settings.simulated_fail_step not in failable:
        raise SettingsError(
            f"SIMULATED_FAIL_STEP: {settings.simulated_fail_step!r} is no step the simulated driver can fail; "
            f"they are {', '.join(sorted(failable))}"
        )
