"""A fake `bench` CLI for tests that run the real provisioning code against it as a subprocess.

Run `FAKE_BENCH` with `cwd` set to a directory made by `make_bench`; the script's docstring lists its behaviour
and the FAKE_BENCH_* environment variables that inject failures.
"""

import getpass
import json
from collections.abc import Iterable
from pathlib import Path

FAKE_BENCH = Path(__file__).with_name("bench")


def make_bench(root: Path, apps: Iterable[str] = ("frappe", "erpnext"), frappe_user: str | None = None) -> Path:
    """Lay out `root` as a bench (`apps/<app>/`, `sites/`): the fake refuses to run anywhere else, like the real one.

    `sites/common_site_config.json` names `frappe_user`, the user bench runs as when started by root:
    the user running the tests unless given.
    """
    for app in apps:
        (root / "apps" / app).mkdir(parents=True, exist_ok=True)
    (root / "sites").mkdir(parents=True, exist_ok=True)
    (root / "sites" / "common_site_config.json").write_text(json.dumps({"frappe_user": frappe_user or getpass.getuser()}))
    return root
