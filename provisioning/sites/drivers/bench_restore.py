"""The bench driver's restore_site and restore_drill steps.

A restore closes the site, keeps a safety backup, and restores with ``bench restore`` (the root
password on stdin); failing, it is put back from that backup. A drill restores a backup into a
scratch site of its own, checks that every table of the dump is there, and drops it.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import Sequence

from provisioning.errors import BackupUnrestorable, SiteUnchanged, StepFailed
from provisioning.platform.identifiers import SITE_NAME
from provisioning.sites.credentials import generate_password
from provisioning.sites.drivers.base import BackupFile
from provisioning.sites.drivers.bench_site import RootLoginRefused, SiteWork, json_document

# "CREATE TABLE `tabUser` (" in a mariadb-dump.
CREATE_TABLE = re.compile(rb"^CREATE TABLE `([^`]+)`")
# What `bench restore` says when the dump itself is bad, as real frappe 15 says it: refused before
# the import (no __Auth table, empty, not gzip), or an SQL error of the import (the mariadb client's
# 1xxx errors; its 2xxx ones, a lost connection say, are the database's, not the dump's).
BAD_DUMP = re.compile(
    r"Table `__Auth` not found in file|is an empty file!|Not a gzipped file|unexpected end of file"
    r"|ERROR 1\d{3} \(\w+\) at line \d+"
)


def dump_tables(path: Path) -> set[str]:
    """The tables a gzip SQL dump makes."""
    with gzip.open(path, "rb") as stream:
        return {match.group(1).decode() for line in stream if (match := CREATE_TABLE.match(line))}


class RestoreSteps(SiteWork):
    """The steps of restore_site and restore_drill, each method named after its step (close_site
    and reopen_site are ``SiteWork``'s)."""

    # restore_site

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
        self._readable_by_bench(files)
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

    def _readable_by_bench(self, files: Sequence[BackupFile]) -> None:
        """Hand the backup's files, and their folders below BACKUP_PATH, to the user bench runs as,
        when that is not the worker's: a backup fetched from offsite storage (or copied by hand) is
        the service's user's alone (0600 in 0700 folders), and bench could not read it."""
        owner = self.config.user.ids
        if owner is None:
            return
        root = self.context.backup_root.resolve()
        for file in files:
            path = file.path.resolve()
            if root not in path.parents:
                continue  # not ours to hand over; bench says so if it cannot read it
            for made in (path, *path.parents[: len(path.relative_to(root).parts) - 1]):
                os.chown(made, *owner)

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
            SiteWork(self.config, self.context.unstoppable()).drop_scratch()
        return self.output(f"the backup restored into {self.scratch}, which answered with all {tables} tables of the dump")

    def _check_scratch(self, files: Sequence[BackupFile]) -> int:
        database = next(file.path for file in files if file.kind == "database")
        if self.installed_apps(self.scratch) is None:
            raise BackupUnrestorable(f"the backup restored into {self.scratch}, which then did not answer", self.output(""))
        listed = self.bench("--site", self.scratch, "execute", "frappe.db.get_tables")
        try:
            restored = set(json_document(listed.stdout, "[") or [])  # nothing at all for an empty database
        except ValueError:
            raise StepFailed(f"`execute frappe.db.get_tables` on {self.scratch} printed no list of tables", self.output(""))
        dumped = dump_tables(database)
        if missing := sorted(dumped - restored):
            raise BackupUnrestorable(
                f"{len(missing)} of the dump's {len(dumped)} tables are missing after the restore: {', '.join(missing[:5])}",
                self.output(""),
            )
        return len(dumped)
