"""The bench driver's settings, checked when a step runs: a fixed setting needs no worker restart."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from provisioning.errors import StepFailed
from provisioning.platform.identifiers import APP_NAME, SITE_NAME
from provisioning.platform.settings import BenchSettings
from provisioning.sites.drivers.bench_user import BenchUser, bench_user


@dataclass(frozen=True)
class BenchConfig:
    """The bench settings, checked; built once per step so a fixed setting needs no worker restart."""

    bench_path: Path
    executable: str
    site_domain: str
    db_root_username: str
    db_root_password: str = field(repr=False)
    apps: tuple[str, ...]
    step_timeout: float
    archive_path: Path
    user: BenchUser

    @classmethod
    def check(cls, settings: BenchSettings, need_apps: bool = False) -> "BenchConfig":
        """Raises StepFailed naming the setting that is missing or wrong."""
        if not settings.bench_path:
            raise StepFailed("BENCH_PATH is not set: it must name the bench directory (the one with sites/ and apps/)")
        bench_path = Path(settings.bench_path).expanduser().resolve()
        if not (bench_path / "sites").is_dir() or not (bench_path / "apps").is_dir():
            raise StepFailed(f"BENCH_PATH: {bench_path} is not a bench directory (it needs sites/ and apps/)")
        executable = shutil.which(settings.executable, path=os.environ.get("PATH"))
        if executable is None:
            raise StepFailed(f"BENCH_EXECUTABLE: {settings.executable!r} is not an executable file or on PATH")
        domain = settings.site_domain.lower()
        if not SITE_NAME.is_valid(f"site.{domain}"):
            raise StepFailed(
                f"SITE_DOMAIN: {settings.site_domain!r} is not a domain name (sites are <tenant slug>.<SITE_DOMAIN>)"
            )
        if not settings.db_root_password:
            raise StepFailed("DB_ROOT_PASSWORD is not set: bench would stop and prompt for it")
        apps = tuple(app for app in re.split(r"[,\s]+", settings.apps) if app)
        # Each goes to bench as an argument (`--install-app <app>`) and names a folder under apps/.
        if not_apps := [app for app in apps if not APP_NAME.is_valid(app)]:
            raise StepFailed(f"SITE_APPS: {', '.join(map(repr, not_apps))} must be {APP_NAME.rule}")
        missing = [app for app in apps if not (bench_path / "apps" / app).is_dir()] if need_apps else []
        if missing:
            raise StepFailed(f"SITE_APPS: {', '.join(missing)} not in {bench_path / 'apps'} (get them with `bench get-app`)")
        try:
            step_timeout = float(settings.step_timeout_seconds)
        except ValueError:
            step_timeout = 0
        if step_timeout <= 0:
            raise StepFailed(f"BENCH_STEP_TIMEOUT_SECONDS: {settings.step_timeout_seconds!r} is not a positive number of seconds")
        archive = Path(settings.archive_path).expanduser() if settings.archive_path else Path("archived/sites")
        return cls(
            bench_path=bench_path,
            executable=executable,
            site_domain=domain,
            db_root_username=settings.db_root_username,
            db_root_password=settings.db_root_password,
            apps=apps,
            step_timeout=step_timeout,
            archive_path=archive if archive.is_absolute() else bench_path / archive,
            user=bench_user(bench_path),
        )
