"""``make run``: prepare a demo tenant and token, then run web, worker and Flower together.

On the embedded defaults it also runs the embedded broker and keeps its data under ``var/``;
with ``DATABASE_URL`` and ``RABBITMQ_URL`` set it uses those instead.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioning import accounts, credentials, migrate
from provisioning.broker import Dispatcher
from provisioning.db import session_factory
from provisioning.embedded_broker import wait_until_answering
from provisioning.enums import Role, TenantStatus
from provisioning.errors import NotFound
from provisioning.migrate import PROJECT_ROOT
from provisioning.models import Membership
from provisioning.service import ProvisioningService
from provisioning.settings import Settings

DEMO_TENANT = "demo"
DEMO_OWNER = "owner@demo.example"
PROCESSES = ("web", "worker", "beat", "flower")


@dataclass(frozen=True)
class Demo:
    token: str
    tenant_status: TenantStatus


def prepare(settings: Settings) -> Demo:
    """Migrate, make sure the demo tenant and its owner exist, and make a fresh token for them."""
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.database_url)
    with session_factory(settings.database_url)() as session:
        if settings.embedded:
            _fail_interrupted_jobs(session)
        try:
            tenant = accounts.find_tenant(session, DEMO_TENANT)
        except NotFound:
            tenant = accounts.create_tenant(session, DEMO_TENANT, "Demo tenant")
        try:
            owner = accounts.find_user(session, DEMO_OWNER)
        except NotFound:
            owner = accounts.create_user(session, DEMO_OWNER)
        is_member = session.scalar(select(Membership).where(Membership.user_id == owner.id, Membership.tenant_id == tenant.id))
        if is_member is None:
            accounts.add_membership(session, owner, tenant, Role.OWNER)
        _token, plain = accounts.issue_token(session, owner, name="quickstart", expires_in=timedelta(days=30))
        return Demo(token=plain, tenant_status=tenant.status)


def _fail_interrupted_jobs(session: Session) -> None:
    """The embedded broker keeps nothing, and no worker runs yet: a job an earlier quickstart left
    running or cancelling lost both its worker and its message (its worker was killed before it
    could record its stop). It is failed as the sweeper fails a lost worker's job: its step
    failed, saying why, the tenant released, and a retry resuming at that step."""
    ProvisioningService(session).fail_interrupted_jobs("the quickstart was stopped while it ran", actor="quickstart")


def _republish_pending(settings: Settings) -> None:
    """Messages of pending jobs died with the previous embedded broker; send them again."""
    with session_factory(settings.database_url)() as session:
        ProvisioningService(session, dispatch=Dispatcher(settings).send_job).republish_pending(unclaimed_for=timedelta(0))


def run(settings: Settings) -> int:
    """Run the Procfile's processes (and the embedded broker) until Ctrl-C; returns the exit code."""
    demo = prepare(settings)
    env = _process_environment(settings)
    port = env.get("PORT", "8000")
    flower_port = env.get("FLOWER_PORT", "5555")
    flower_user, _, flower_password = env["FLOWER_BASIC_AUTH"].partition(":")
    click.echo(_banner(settings, demo, port, flower_port, flower_user, flower_password))

    broker = None
    if settings.embedded:
        broker = subprocess.Popen([sys.executable, "-m", "provisioning.cli", "embedded-broker"], env=env)
        if not wait_until_answering(settings.embedded_broker_port, timeout=15):
            broker.terminate()
            raise click.ClickException(f"the embedded broker did not start on port {settings.embedded_broker_port}")
        _republish_pending(settings)
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", str(PROJECT_ROOT / "Procfile"), *PROCESSES], cwd=PROJECT_ROOT, env=env
    )
    try:
        return honcho.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached honcho too (same process group); it stops its processes itself.
        return honcho.wait()
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait()


def _process_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    # The processes run from the project root; they must find the same data directory.
    env["DATA_DIR"] = str(settings.data_dir)
    # The processes' commands (gunicorn, celery) live beside this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("FLOWER_BASIC_AUTH", f"admin:{secrets.token_urlsafe(12)}")
    if not settings.site_credentials_key:
        env["SITE_CREDENTIALS_KEY"] = _kept_credentials_key(settings.data_dir)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("LOG_FORMAT", "console")  # honcho's pipe is no terminal, but a person reads it
    return env


def _kept_credentials_key(data_dir: Path) -> str:
    """The quickstart's SITE_CREDENTIALS_KEY, made once and kept beside its data: the site passwords
    stored in one run must open in the next."""
    path = data_dir / "site-credentials.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(credentials.new_key())
    return path.read_text().strip()


def _banner(settings: Settings, demo: Demo, port: str, flower_port: str, flower_user: str, flower_password: str) -> str:
    base = f"http://127.0.0.1:{port}"
    token = demo.token
    # A job the demo tenant can take now: a second run finds the site already created.
    job_type, action = (
        ("backup_site", "Back up the site") if demo.tenant_status == TenantStatus.ACTIVE else ("create_site", "Create a site")
    )
    mode = (
        f"embedded defaults (SQLite in {settings.data_dir}, in-memory broker): for trying the service only"
        if settings.embedded
        else "configured PostgreSQL and RabbitMQ"
    )
    job_command = (
        f'curl -s -X POST {base}/api/v1/provisioning/jobs -H "Authorization: Bearer {token}" '
        f'-H "Content-Type: application/json" -d \'{{"job_type": "{job_type}"}}\''
    )
    return f"""
ERPMax provisioning, on {mode}.

  Token for {DEMO_OWNER}, owner of tenant '{DEMO_TENANT}' (shown once, valid 30 days):
    {token}

  {action}:
    {job_command}
  Follow it:
    curl -s {base}/api/v1/provisioning/jobs -H "Authorization: Bearer {token}"

  API docs: {base}/docs
  Flower:   http://127.0.0.1:{flower_port}  (user {flower_user}, password {flower_password})

Ctrl-C stops everything.
"""
