"""The interface between a job's steps and whatever performs them on a site."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

from provisioning.enums import JobType


@dataclass(frozen=True)
class BackupFile:
    """A file a backup command wrote: ``kind`` is database, config, public_files or private_files."""

    kind: str
    path: Path


class StandbyBook(Protocol):
    """The platform's record of standby sites (``servers.standby``), as a step that claims, drops or
    makes them sees it; sites are named by their label (the driver makes a site name of it)."""

    def to_claim(self) -> tuple[str, str | None] | None:
        """The label and fingerprint of the standby site this create is to claim; None: none any more."""

    def claimed(self, label: str) -> None:
        """The standby site is the tenant's site now."""

    def give_up(self, label: str | None, reason: str) -> None:
        """No claim (of ``label``, put back under its own name): the job's next steps make the site."""

    def to_drop(self, fingerprint: str) -> dict[str, str]:
        """The pool's sites to drop, each with why, given what the bench makes sites with now."""

    def dropped(self, label: str) -> None: ...

    def to_make(self, made: int) -> str | None:
        """The label of the next standby site to make (recorded as being made), having made ``made``; None: enough."""

    def made(self, label: str, fingerprint: str) -> None: ...

    def failed_to_make(self, label: str, reason: str) -> None: ...

    def making(self) -> list[str]:
        """The sites this pool job began to make and did not finish (a cancel drops them)."""


class StepContext(Protocol):
    """What a driver knows of the job whose step it runs, and how it reports back."""

    job_id: uuid.UUID
    job_type: JobType
    tenant_slug: str
    options: Mapping[str, object]
    standby: StandbyBook

    def should_stop(self) -> bool:
        """True once the step should stop early (its job is being cancelled, is no longer this
        worker's, or its worker is stopping); long steps ask it now and then and raise
        StepStopped. A pure read: asking costs nothing."""

    def must_stop(self) -> str | None:
        """Why the step must end now, even one that would ignore a cancel (the cancel's grace
        period is over, the job is no longer this worker's, the worker is stopping), else None.
        Whatever waits on outside work (a command, a sleep) asks it and raises StepTerminated."""

    def reached(self, step: str) -> bool:
        """Whether the job (or the failed one it resumes) started ``step``: what an undo has to undo."""

    def unstoppable(self) -> "StepContext":
        """The same context for work that must run to its end even though the job is stopping
        (its cancel's clean-up, dropping a drill's scratch site)."""

    def admin_password(self) -> str:
        """The site's Administrator password: stored encrypted when the job started, the same on a retry."""

    @property
    def backup_root(self) -> Path:
        """BACKUP_PATH, where backup_directory makes its folders."""

    def backup_directory(self, owner: tuple[int, int] | None = None) -> Path:
        """An empty directory of this job's own for the files of a backup (created), private to
        the service's user or handed to ``owner`` (uid, gid)."""

    def record_backup(self, site: str, files: Sequence[BackupFile]) -> None:
        """Hand the files a backup produced to the platform, which describes and later verifies them."""

    def backup_to_restore(self) -> Sequence[BackupFile]:
        """The files of the backup a restore or a restore drill restores (checked by the platform)."""

    def safety_backup(self) -> Sequence[BackupFile] | None:
        """The files of the verified backup the job took before it changed the site; None if it took none."""


class SiteDriver(Protocol):
    def run_step(self, step: str, context: StepContext) -> str:
        """Perform one named step for the tenant's site and return its output.

        Every step checks what already exists before acting, so running it again is harmless.

        Raises:
            StepFailed: the step failed; its message becomes the job's error.
            StepStopped: the step stopped early because ``context.should_stop()`` said so.
            StepTerminated: it stopped because ``context.must_stop()`` gave a reason.
        """

    def clean_up(self, step: str, context: StepContext) -> str:
        """Remove what a failed attempt at ``step`` left half-done, before a retry runs it again."""

    def undo(self, context: StepContext) -> str:
        """Remove what a cancelled job left half-done (or take back what it did: a suspend's site is
        opened again, an unsuspend's closed again), and return the output."""
