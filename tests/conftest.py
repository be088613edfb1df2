"""Each test's kind, as a marker, so ``pytest -m unit`` (or integration, process, disruptive) runs one kind.

- ``unit``: everything under ``tests/unit``: pure logic, no database, no broker, no process.
- ``integration``: everything under ``tests/integration`` and ``tests/smoke``: the real PostgreSQL
  and RabbitMQ.
- ``process``: an integration test that starts a real service process (worker, gunicorn, the sweeper,
  Flower, a RabbitMQ node, the quickstart). Found here, not written on each test: a test is one
  when its own code, its fixtures' code, or a helper of ours they call, names one of the classes
  that start such a process (``PROCESS_STARTERS``).
- ``disruptive``: kills workers, kills database connections, stops a RabbitMQ node, or soaks;
  written as ``pytestmark`` in each such module, since what a test does to others is a choice
  the test's author makes, not something a name gives away. Under ``--dist loadgroup`` they run
  one after another on one pytest-xdist worker, never two at once.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from types import CodeType

import pytest

TESTS = Path(__file__).parent
KIND_BY_FOLDER = {"unit": "unit", "integration": "integration", "smoke": "integration"}
# By name, so that collecting the unit tests imports none of the integration machinery.
PROCESS_STARTERS = {
    "tests.stack.WorkerProcess", "tests.stack.WebProcess", "tests.stack.SweeperProcess", "tests.processes.GroupProcess",
    "tests.processes.TerminalProcess", "tests.rabbitmq_node.RabbitMQNode",
}  # fmt: skip
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pytest_make_parametrize_id(val: object, argname: str) -> str | None:
    """Test ids alike in every process, as pytest-xdist requires of its workers' collections: a
    random UUID in a parameter reads ``<uuid>``, and binary bytes (gzip's carry the second they
    were made) read as their length. Anything else keeps pytest's own id."""
    if isinstance(val, bytes) and not (val.isascii() and val.decode().isprintable()):
        return f"{argname}-{len(val)}-bytes"
    if isinstance(val, str) and UUID_TEXT.search(val):
        return UUID_TEXT.sub("<uuid>", val)
    return None


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = KIND_BY_FOLDER.get(item.path.relative_to(TESTS).parts[0])
        if kind is not None:
            item.add_marker(kind)
        if kind == "integration" and starts_a_process(item):
            item.add_marker("process")
        if item.get_closest_marker("disruptive"):
            item.add_marker(pytest.mark.xdist_group("disruptive"))  # one after another, on one xdist worker


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under ``--dist loadgroup`` (in an xdist worker), pytest-xdist groups a test by a suffix it
    writes into the test's id; a pytest whose ids it cannot write (9.2, pytest-xdist#1386) leaves
    it out without a word, and the disruptive and real-bench tests would run side by side: each
    such test fails instead, saying so."""
    if getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail(
            f"pytest-xdist could not put this test in its xdist_group under pytest {pytest.__version__}: "
            "install the pytest setup.cfg asks for (make clean test)",
            pytrace=False,
        )


def starts_a_process(item: pytest.Item) -> bool:
    """Whether the test's function or any of its fixtures reaches one of ``PROCESS_STARTERS``."""
    if not isinstance(item, pytest.Function):
        return False
    functions = [item.function, *(fixture_function(item, name) for name in item.fixturenames)]
    seen: set[CodeType] = set()
    return any(reaches_a_starter(function, seen) for function in functions if function is not None)


def fixture_function(item: pytest.Function, name: str):
    """The function of fixture ``name`` as the test sees it: its module's, else the nearest conftest's."""
    folders = [folder for folder in item.path.parents if folder.is_relative_to(TESTS)]
    conftests = [sys.modules.get(".".join((*folder.relative_to(TESTS.parent).parts, "conftest"))) for folder in folders]
    for namespace in (item.module, *conftests):
        found = getattr(namespace, name, None) if namespace is not None else None
        if found is not None and hasattr(found, "__wrapped__"):  # pytest's fixture definition wraps the function
            return inspect.unwrap(found)
    return None  # pytest's own (tmp_path, monkeypatch...): none starts a service


def reaches_a_starter(function, seen: set[CodeType]) -> bool:
    """Follow the names a function's code uses (nested functions and lambdas included) into our own
    test helpers, modules ``tests.*``; true when one of them is a process starter."""
    code = getattr(function, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    names = set()
    pending = [code]
    while pending:
        current = pending.pop()
        names.update(current.co_names)
        pending.extend(const for const in current.co_consts if isinstance(const, CodeType))
    for name in names:
        value = function.__globals__.get(name)
        if isinstance(value, type) and f"{value.__module__}.{value.__qualname__}" in PROCESS_STARTERS:
            return True
        if not str(getattr(value, "__module__", "")).startswith("tests."):
            continue
        members = vars(value).values() if isinstance(value, type) else [value]
        if any(reaches_a_starter(member, seen) for member in members if inspect.isfunction(member)):
            return True
    return False
