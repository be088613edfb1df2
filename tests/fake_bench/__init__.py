"""A fake `bench` CLI for tests that run the real provisioning code against it as a subprocess.

Run `FAKE_BENCH` with `cwd` set to a directory made by `make_bench`; the script's docstring lists its behaviour
and the FAKE_BENCH_* environment variables that inject failures.
"""

from collections.abc import Iterable
from pathlib import Path

FAKE_BENCH = Path(__file__).with_name("bench")


def make_bench(root: Path, apps: Iterable[str] = ("frappe", "erpnext")) -> Path:
    """Lay out `root` as a bench (`apps/<app>/`, `sites/`): the fake refuses to run anywhere else, like the real one."""
    for app in apps:
        (root / "apps" / app).mkdir(parents=True, exist_ok=True)
    (root / "sites").mkdir(parents=True, exist_ok=True)
    return root
