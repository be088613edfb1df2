import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_the_core_imports_neither_the_api_nor_the_worker_nor_flask():
    """`provisioning` must stay usable from the CLI, the API and the worker alike."""
    probe = (
        "import sys, provisioning.cli, provisioning.service, provisioning.runner, provisioning.broker, provisioning.quickstart;"
        "print(sorted(m for m in ('flask', 'flask_smorest', 'api', 'tasks') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
