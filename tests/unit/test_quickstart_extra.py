"""The quickstart's process runner and embedded broker come with an extra a deployment leaves out."""

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_the_quickstart_without_its_extra_stops_in_one_line_saying_how_to_install_it_and_prepares_nothing(tmp_path):
    # As if neither were installed: an import of a name set to None in sys.modules fails.
    hide_the_extra = "import sys; sys.modules['honcho'] = sys.modules['fakeredis'] = None;"
    result = subprocess.run(
        [sys.executable, "-c", hide_the_extra + "from provisioning.cli import main; main(['quickstart'])"],
        cwd=PROJECT_ROOT,
        env={"PATH": os.environ["PATH"], "DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: the quickstart needs honcho and fakeredis, from its extra: pip install -e '.[quickstart]' (make run does)"
    ]
    assert list(tmp_path.iterdir()) == [], "no database, no demo tenant, no key"
