"""Test helpers: waiting on conditions with a deadline (never sleeping and hoping), and checking API answers."""

import fcntl
import stat
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from provisioning.jobs.patience import PatientService
from provisioning.jobs.service import ProvisioningService

T = TypeVar("T")


def poll_until(probe: Callable[[], T], timeout: float, interval: float = 0.05) -> tuple[bool, T]:
    """Call ``probe`` every ``interval`` until it returns something truthy or ``timeout`` passes.

    Returns whether it did, and what it returned last. The one place tests pause: always
    between two looks at a condition, never as a guess that something has happened.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result or time.monotonic() >= deadline:
            return bool(result), result
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def wait_for(probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> T:
    """Call ``probe`` until it returns something truthy, and return that; fail at the deadline."""
    happened, result = poll_until(probe, timeout, interval)
    if not happened:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last saw {result!r}")
    return result


def assert_error(response, *statuses: int) -> dict:
    """Assert an error answer in the API's one shape and return its body.

    ``{"code": int, "status": str, "message": str}``, plus ``errors`` for a 422, so a client
    can handle every error with one piece of code. With several ``statuses``, any of them will do.
    """
    assert response.status_code in statuses, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json", (response.mimetype, response.get_data(as_text=True)[:200])
    body = response.get_json()
    assert body["code"] == response.status_code, body
    assert isinstance(body["status"], str) and body["status"], body
    assert isinstance(body["message"], str) and body["message"], body
    if response.status_code == 422:
        assert isinstance(body.get("errors"), dict) and body["errors"], body
    return body


def not_private(root: Path) -> dict[str, str]:
    """The modes of what under ``root`` other users could read or enter: everything but folders
    at 0700 and files at 0600. Empty when all is private."""
    return {
        str(path): oct(stat.S_IMODE(path.stat().st_mode))
        for path in root.rglob("*")
        if stat.S_IMODE(path.stat().st_mode) != (0o700 if path.is_dir() else 0o600)
    }


class StrictClient(FlaskClient):
    """A Flask test client that fails the test on any 5xx or HTML answer (outside ``/docs``).

    A client of this API must never see a server error or an HTML error page, whatever it sends.
    """

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:500])
        if response.request.path != "/docs":
            assert response.mimetype != "text/html", (response.request.path, response.get_data(as_text=True)[:200])
        return response


def committing(session: Session, **kwargs) -> PatientService:
    """The service on ``session`` as the API or a worker uses it: each call committed (and a new
    job published after its commit), so other processes and sessions see what it wrote."""
    return PatientService(ProvisioningService(session, **kwargs), patience=0)


@contextmanager
def machine_lock(name: str, waiting_for: str, timeout: float = 600) -> Iterator[None]:
    """Held by one test run of this machine at a time: ``<temp dir>/<name>.lock``, waited for up to
    ``timeout`` seconds, the wait said to be for ``waiting_for``."""
    path = Path(tempfile.gettempdir()) / f"{name}.lock"
    with path.open("a") as lock:

        def locked() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_for(locked, timeout=timeout, interval=1, what=f"{waiting_for} (lock {path})")
        yield


def recording(sent: list) -> Callable[[uuid.UUID, str], None]:
    """A dispatch that sends nothing and notes the id of each job it was given, in ``sent``."""
    return lambda job_id, _server_name: sent.append(job_id)
