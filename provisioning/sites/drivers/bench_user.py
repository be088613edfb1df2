"""Who bench runs as, and whether that user can write a folder.

bench refuses to run as root unless ``sites/common_site_config.json`` names its ``frappe_user``,
and then switches to that user. So with a worker running as root, bench writes as another user:
a folder the worker made (mode 0700, its own) is closed to it, and bench says only "Backup failed
... Database or site_config.json may be corrupted", or drops a site's database before it finds
it cannot move the site's folder to the archive. The driver asks here first.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provisioning.errors import StepFailed


@dataclass(frozen=True)
class BenchUser:
    """The user bench runs as: the worker's own, or (``switched``) the ``frappe_user`` bench
    switches to when the worker is root."""

    name: str
    uid: int
    gid: int
    switched: bool

    @property
    def described(self) -> str:
        return f"{self.name} (the bench's frappe_user: the worker is root)" if self.switched else f"{self.name} (the worker's)"

    @property
    def ids(self) -> tuple[int, int] | None:
        """(uid, gid) to hand a folder to, when bench writes as another user than the worker."""
        return (self.uid, self.gid) if self.switched else None

    def cannot_write(self, folder: Path, what: str) -> StepFailed | None:
        """The failure to report before bench is asked to write in ``folder`` (``what`` it is) and
        cannot, saying so plainly; None when it can."""
        if self.can_write(folder):
            return None
        return StepFailed(f"bench runs as {self.described}, which cannot write {what} {folder}: make it writable by {self.name}")

    def can_write(self, folder: Path) -> bool:
        """Whether this user can make files in ``folder`` (or, while it does not exist yet, in its
        nearest parent that does), as the system answers for that user: ``test -w -a -x`` run
        as it, when it is not the worker's."""
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not self.switched:
            return os.access(folder, os.W_OK | os.X_OK)
        probe = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "test", "-w", str(folder), "-a",
                 "-x", str(folder)]  # fmt: skip
        return subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True).returncode == 0


def bench_user(bench_path: Path) -> BenchUser:
    """Who bench in ``bench_path`` runs as, for a worker of this process's user.

    Raises:
        StepFailed: the worker is root and the bench names no ``frappe_user`` (bench would
            refuse to run), or names one this host does not have.
    """
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return BenchUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switched=False)
    config_path = bench_path / "sites" / "common_site_config.json"
    try:
        frappe_user = json.loads(config_path.read_text()).get("frappe_user")
    except (OSError, ValueError, AttributeError):
        frappe_user = None
    if not frappe_user:
        raise StepFailed(
            f"the worker runs as root, and bench refuses to run as root unless {config_path} names its frappe_user: "
            "set frappe_user there (the user that owns the bench), or run the worker as that user"
        )
    try:
        entry = pwd.getpwnam(frappe_user)
    except KeyError:
        raise StepFailed(f"frappe_user {frappe_user!r} in {config_path} is not a user of this host") from None
    return BenchUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switched=entry.pw_uid != 0)
