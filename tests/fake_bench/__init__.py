"""A fake `bench` CLI for tests that run the real provisioning code against it as a subprocess.

Run `FAKE_BENCH` with `cwd` set to a directory made by `make_bench`; the script's docstring lists its behaviour
and the FAKE_BENCH_* environment variables that inject failures.
"""

import getpass
import json
from collections.abc import Iterable
from pathlib import Path

FAKE_BENCH = Path(__file__).with_name("bench")
# As the real bench's apps say in their ``__init__.py`` (what ``bench version`` shows).
APP_VERSIONS = {"frappe": "15.74.1", "erpnext": "15.70.2"}


def make_bench(root: Path, apps: Iterable[str] = ("frappe", "erpnext"), frappe_user: str | None = None) -> Path:
    """Lay out `root` as a bench (`apps/<app>/<app>/__init__.py` with its `__version__`, `sites/`): the
    fake refuses to run anywhere else, like the real one.

    `sites/common_site_config.json` names `frappe_user`, the user bench runs as when started by root:
    the user running the tests unless given.
    """
    for app in apps:
        (root / "apps" / app / app).mkdir(parents=True, exist_ok=True)
        (root / "apps" / app / app / "__init__.py").write_text(f'__version__ = "{APP_VERSIONS.get(app, "1.0.0")}"\n')
    (root / "sites").mkdir(parents=True, exist_ok=True)
    (root / "sites" / "common_site_config.json").write_text(json.dumps({"frappe_user": frappe_user or getpass.getuser()}))
    return root
