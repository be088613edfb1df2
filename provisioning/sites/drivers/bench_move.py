"""The bench driver's move_site steps: each runs on the bench of the server it concerns.

On the server the site leaves: it is closed (maintenance mode) before its backup, so nothing its
users write is left behind, and dropped only once the tenant is served from the new server. On
the new server: a site of the same name is made and the backup restored into it, from the copy
fetched from offsite storage, with the old site's encryption key, without which frappe could not
read the passwords the database holds encrypted.
"""

from __future__ import annotations

import json
import os

from provisioning.errors import StepFailed
from provisioning.sites.credentials import generate_password
from provisioning.sites.drivers.bench_restore import RestoreSteps


class MoveSteps(RestoreSteps):
    """The steps of move_site, each method named after its step (close_site is the restore's)."""

    # on the server the site leaves

    def move_backup(self) -> str:
        return self.run_backup()

    def drop_source(self) -> str:
        if not self.site_dir.exists():
            return self.output(f"{self.site} is not in this bench any more; nothing to drop")
        self.drop(self.config.archive_path, force=True)
        return self.output(f"dropped {self.site} from this server's bench (archived)")

    # on the new server

    def restore_target(self) -> str:
        """A site made afresh and the move's backup restored into it; a site an earlier attempt
        left here (a retry, a worker lost) is dropped first: it is this move's, never the tenant's
        live site, which is on the other server until the switch."""
        files = self.context.backup_to_restore()
        dropped = ""
        if self.site_dir.exists():
            self.drop(self.config.archive_path / "discarded", force=True)
            dropped = "dropped what an earlier attempt left; "
        password = generate_password()  # the restore brings the site's own Administrator back
        self.bench_as_root("new-site", self.site, answers=(password, password))
        self._keep_encryption_key(next((file.path for file in files if file.kind == "config"), None))
        self.restore(self.site, files)
        self.bench("--site", self.site, "migrate")
        self.bench("--site", self.site, "set-config", "host_name", f"https://{self.site}")
        self.bench("--site", self.site, "enable-scheduler")
        return self.output(f"{dropped}made {self.site} and restored the moved backup into it")

    def verify_target(self) -> str:
        return self.verify_site()

    def _keep_encryption_key(self, backup_config) -> None:
        """The old site's ``encryption_key`` in the new site's config, written to the file (never on
        a command line, where every user of the host would see it), keeping its owner and mode."""
        if backup_config is None:
            return
        try:
            key = json.loads(backup_config.read_text()).get("encryption_key")
        except (OSError, ValueError) as error:
            raise StepFailed(f"the moved backup's site config cannot be read: {error}") from None
        if not key:
            return
        config_path = self.site_dir / "site_config.json"
        config = json.loads(config_path.read_text())
        config["encryption_key"] = key
        status = config_path.stat()
        written = config_path.with_suffix(".moving")
        written.write_text(json.dumps(config, indent=1))
        os.chown(written, status.st_uid, status.st_gid)
        written.chmod(status.st_mode & 0o777)
        written.replace(config_path)
