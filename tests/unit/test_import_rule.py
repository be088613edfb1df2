import ast
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_the_core_imports_neither_the_api_nor_the_worker_nor_flask():
    """`provisioning` must stay usable from the CLI, the API and the worker alike."""
    probe = (
        "import sys, provisioning.cli, provisioning.jobs.service, provisioning.jobs.runner,"
        " provisioning.messaging.broker, provisioning.operations.quickstart;"
        "print(sorted(m for m in ('flask', 'flask_smorest', 'api', 'tasks') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# Each part of the core, from the bottom up; a module may import its own part and those below it.
LAYERS = [
    {"platform"},
    {"models", "enums", "errors"},
    {"accounts"},
    {"sites", "servers"},
    {"backups", "messaging", "webhooks"},
    {"jobs"},
    {"operations"},
    {"cli"},
]


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "provisioning" or len(parts) < 2:
        return None
    return next(rank for rank, parts_of_layer in enumerate(LAYERS) if parts[1] in parts_of_layer)


def _provisioning_imports(path: Path) -> list[str]:
    imported = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
        elif isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
    return [name for name in imported if name.startswith("provisioning.")]


def test_each_part_of_the_core_imports_only_its_own_part_and_those_below_it():
    """The layers drawn in ``provisioning/__init__.py``: the platform knows nothing of the domain,
    and no part reaches up (backups, messaging and webhooks, side by side, do not import each other)."""
    upward = []
    for path in (PROJECT_ROOT / "provisioning").rglob("*.py"):
        module = ".".join(part for part in path.relative_to(PROJECT_ROOT).with_suffix("").parts if part != "__init__")
        own = _layer_of(module)
        if own is None:
            continue
        for imported in _provisioning_imports(path):
            theirs = _layer_of(imported)
            if theirs > own or (theirs == own and imported.split(".")[1] != module.split(".")[1] and own != 1):
                upward.append(f"{module} imports {imported}")
    assert upward == []
