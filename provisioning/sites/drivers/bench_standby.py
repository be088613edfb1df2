"""Standby sites on a real bench (``sites.standby_steps`` says how they are used).

Found on Frappe 15.74.1: a site's name is only its folder under ``sites/`` (with its logs, locks
and files) and the ``host_name`` in its ``site_config.json``. Its database is named by
``db_name`` (random), and so are its Redis cache keys; neither its database nor its files hold the
name. So a rename is: a fresh Administrator password, ``host_name``, the folder. A standby site is
made with its scheduler enabled but paused (``pause_scheduler`` in its config: an idle site runs
no jobs), and the claim lifts the pause in the same write of its config as ``host_name``, rather
than with two more bench commands (a second and a half each).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path

from provisioning.errors import StepFailed
from provisioning.sites import standby_steps
from provisioning.sites.drivers.bench_site import SiteWork

STANDBY_SUBDOMAIN = "standby"
VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


class BenchStandbySites(SiteWork):
    """The standby sites of this bench (``standby_steps.StandbySites``), and the job's steps that use them."""

    def standby_site(self, label: str) -> str:
        return f"{label}.{STANDBY_SUBDOMAIN}.{self.config.site_domain}"

    def fingerprint(self) -> str:
        """SITE_APPS, the version of frappe and of each of them (``__version__``, as ``bench version``
        shows it), and the site domain: read from files, in milliseconds, as a claim reads it."""
        versions = []
        for app in dict.fromkeys(("frappe", *self.config.apps)):
            source = self.config.bench_path / "apps" / app / app / "__init__.py"
            found = VERSION_LINE.search(source.read_text()) if source.is_file() else None
            versions.append(f"{app} {found.group(1) if found else 'unknown'}")
        return f"apps={','.join(self.config.apps)}; {', '.join(versions)}; domain={self.config.site_domain}"

    def make_standby(self, label: str) -> str:
        # Each site of the batch has BENCH_STEP_TIMEOUT_SECONDS of its own: the step makes several.
        self.deadline = time.monotonic() + self.config.step_timeout
        site = self.standby_site(label)
        password = secrets.token_urlsafe(24)  # never used: a claim sets the tenant's own
        apps = [arg for app in self.config.apps for arg in ("--install-app", app)]
        self.bench_as_root("new-site", site, *apps, answers=(password, password))
        installed = self.installed_apps(site)
        if installed is None or (missing := self.missing_apps(installed)):
            raise StepFailed(f"standby site {site} was made but lacks {', '.join(missing) if installed else 'frappe'}")
        self.bench("--site", site, "enable-scheduler")
        self.bench("--site", site, "scheduler", "pause")
        return f"made {site}"

    def drop_standby(self, label: str) -> str:
        site = self.standby_site(label)
        self.remove(site, self.config.archive_path / "standby", keep_archived=False)
        return f"{site}: dropped"

    def rename_standby(self, label: str) -> str:
        standby_dir = self.config.bench_path / "sites" / self.standby_site(label)
        if standby_dir.is_dir() and not self.site_dir.exists():
            self.bench("--site", standby_dir.name, "set-admin-password", answers=(self.context.admin_password(),))
            self._write_config(standby_dir / "site_config.json", host_name=f"https://{self.site}", pause_scheduler=0)
            standby_dir.rename(self.site_dir)
        elif standby_dir.exists() or not self.site_dir.is_dir():
            raise StepFailed(f"cannot rename {standby_dir.name}: it is missing, or {self.site} exists already")
        installed = self.installed_apps()
        if missing := self.missing_apps(installed) if installed is not None else ["frappe"]:
            self.site_dir.rename(standby_dir)
            raise StepFailed(f"{self.site} does not answer under its new name with {', '.join(missing)}", output=self.output(""))
        return f"{standby_dir.name} is now {self.site}, answering with apps {', '.join(sorted(installed))}"

    def _write_config(self, path: Path, **values: object) -> None:
        """Change keys of a site's config as ``bench set-config`` would, in one write that replaces
        the file whole (a reader never sees half of it), owned by the bench's user as bench's is."""
        config = json.loads(path.read_text())
        config.update(values)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".site_config.")
        with os.fdopen(handle, "w") as stream:
            json.dump(config, stream, indent=1, sort_keys=True)
        os.chmod(temporary, 0o644)
        if (ids := self.config.user.ids) is not None:
            os.chown(temporary, *ids)
        os.replace(temporary, path)

    # The steps, with the commands they ran.

    def claim_standby(self) -> str:
        return self.output(standby_steps.claim_standby(self, self.context))

    def drop_standbys(self) -> str:
        return self.output(standby_steps.drop_standbys(self, self.context))

    def make_standbys(self) -> str:
        return self.output(standby_steps.make_standbys(self, self.context))

    def undo_pool_job(self) -> str:
        return self.output(standby_steps.undo_pool_job(self, self.context))
