"""The bench driver's suspend_site and unsuspend_site steps: maintenance mode and the scheduler.

As frappe 15 does them: ``bench --site S set-maintenance-mode on|off`` writes ``maintenance_mode``
(1 or 0) into the site's site_config.json, and frappe then answers the site's users with its
maintenance page; ``disable-scheduler`` and ``enable-scheduler`` set System Settings'
``enable_scheduler`` in the site's database (not in site_config.json), saying "Disabled for S" or
"Enabled for S". frappe's scheduler runs nothing for a site in maintenance mode, paused
(``pause_scheduler``) or disabled, and ``bench --site S scheduler status -f json`` says which:
``{"status": "disabled", ...}`` if any of the three holds, ``enabled`` otherwise.

So a suspend closes the site first (from then on it is closed in effect), then disables the
scheduler, so that it stays stopped even were maintenance mode turned off by hand; an unsuspend
enables the scheduler while the site is still closed, then opens it. Every step only sets a state,
so running one again (a retry, a redelivery) is harmless. The checks read maintenance mode from
the site's config, where bench wrote it, and the scheduler's state from bench.
"""

from __future__ import annotations

import json

from provisioning.enums import JobType
from provisioning.errors import StepFailed
from provisioning.sites.drivers.bench_site import SiteWork, json_document


class SuspensionSteps(SiteWork):
    """The steps of suspend_site and unsuspend_site, each method named after its step (close_site
    and reopen_site are ``SiteWork``'s), and the undo of either."""

    # suspend_site

    def disable_scheduler(self) -> str:
        self._require_site_folder()
        self.bench("--site", self.site, "disable-scheduler")
        return self.output(f"{self.site}: scheduler disabled")

    def verify_suspended(self) -> str:
        if not self._in_maintenance_mode():
            raise StepFailed(f"{self.site} is not in maintenance mode after set-maintenance-mode on", output=self.output(""))
        if (status := self._scheduler_status()) != "disabled":
            raise StepFailed(f"the scheduler of {self.site} is {status} after disable-scheduler", output=self.output(""))
        return self.output(f"{self.site} shows the maintenance page and runs no scheduled jobs")

    # unsuspend_site

    def enable_scheduler(self) -> str:
        self._require_site_folder()
        self.bench("--site", self.site, "enable-scheduler")
        return self.output(f"{self.site}: scheduler enabled (it runs once the site is out of maintenance mode)")

    def verify_open(self) -> str:
        if self._in_maintenance_mode():
            raise StepFailed(f"{self.site} is still in maintenance mode after set-maintenance-mode off", output=self.output(""))
        if (status := self._scheduler_status()) != "enabled":
            raise StepFailed(
                f"the scheduler of {self.site} is {status} after enable-scheduler (paused, or disabled in its config?)",
                output=self.output(""),
            )
        return self.verify_site()

    def undo(self) -> str:
        """What a cancel leaves: a suspend's site opened again, an unsuspend's closed again."""
        if self.context.job_type == JobType.SUSPEND_SITE:
            self.enable_scheduler()
            return self.reopen_site()
        self.close_site()
        return self.disable_scheduler()

    def _in_maintenance_mode(self) -> bool:
        self._require_site_folder()
        try:
            config = json.loads((self.site_dir / "site_config.json").read_text())
        except (OSError, ValueError) as error:
            raise StepFailed(f"the site config of {self.site} cannot be read: {error}") from None
        return bool(config.get("maintenance_mode"))

    def _scheduler_status(self) -> str:
        """``enabled`` or ``disabled``, as bench says it."""
        command = self.bench("--site", self.site, "scheduler", "status", "-f", "json")
        try:
            status = json_document(command.stdout, "{")
        except ValueError:
            status = None
        if not isinstance(status, dict) or status.get("status") not in ("enabled", "disabled"):
            raise StepFailed(f"bench scheduler status said no status for {self.site}", output=self.output(""))
        return status["status"]
