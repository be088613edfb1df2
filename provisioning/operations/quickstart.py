"""``make run``: prepare a demo tenant and token, then run web, worker, the sweeper and Flower together.

On the embedded defaults it also runs the embedded broker and keeps its data under ``var/``;
with ``DATABASE_URL`` and ``RABBITMQ_URL`` set it uses those instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import click
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from provisioning.accounts import registry as accounts
from provisioning.accounts.audit import Origin
from provisioning.backups.book import PRIVATE_DIRECTORY_MODE, PRIVATE_FILE_MODE
from provisioning.enums import JobType, Role, TenantStatus
from provisioning.errors import NotFound
from provisioning.jobs.repairs import JobRepairs
from provisioning.jobs.workflows import workflow_for
from provisioning.messaging.broker import Dispatcher
from provisioning.models import ACTIVE_JOB_STATUSES, Membership, ProvisioningJob, Server, Tenant
from provisioning.platform import migrate
from provisioning.platform.db import session_factory
from provisioning.platform.migrate import PROJECT_ROOT
from provisioning.platform.settings import DEFAULT_SERVER_NAME, Settings
from provisioning.servers.registry import ServerRegistry
from provisioning.sites import credentials

DEMO_TENANT = "demo"
# The standby sites the quickstart's server keeps ready, the first time (``_demo_standby_pool``).
DEMO_STANDBY_POOL = 2
# Honcho gives the first of these PORT and the next ones PORT+100, +200...: web must come first.
PROCESSES = ("web", "worker", "sweeper", "flower")
# The jobs the banner offers, the first the demo tenant's state allows, and what it calls them.
OFFERED_JOBS = {JobType.BACKUP_SITE: "Back up the site", JobType.CREATE_SITE: "Create a site"}


def demo_owner(tenant_slug: str) -> str:
    """The e-mail of a demo tenant's owner: each demo tenant has its own."""
    return f"owner@{tenant_slug}.example"


DEMO_OWNER = demo_owner(DEMO_TENANT)


@dataclass(frozen=True)
class Demo:
    """The demo tenant as the banner shows it: a job it takes now (``offer``), or else the job it
    is busy with (``active_job``), which must end before another can start."""

    token: str
    tenant: str
    owner: str
    tenant_status: TenantStatus
    offer: JobType | None = None
    active_job: ProvisioningJob | None = None


def prepare(settings: Settings) -> Demo:
    """Migrate, make sure a demo tenant and its owner exist, and make a fresh token for them."""
    if settings.embedded:
        _private_data_dir(settings)
    migrate.upgrade(settings.database_url)
    with session_factory(settings.database_url)() as session:
        if settings.embedded:
            _fail_interrupted_jobs(session)
            _demo_standby_pool(session)
        tenant = _demo_tenant(session)
        owner_email = demo_owner(tenant.slug)
        try:
            owner = accounts.find_user(session, owner_email)
        except NotFound:
            owner = accounts.create_user(session, owner_email)
        is_member = session.scalar(select(Membership).where(Membership.user_id == owner.id, Membership.tenant_id == tenant.id))
        if is_member is None:
            accounts.add_membership(session, owner, tenant, Role.OWNER)
        lifetime = timedelta(days=min(30, settings.token_max_lifetime_days))
        _token, plain = accounts.issue_token(session, owner, name="quickstart", expires_in=lifetime)
        active_job = session.scalars(
            select(ProvisioningJob).where(ProvisioningJob.tenant_id == tenant.id, ProvisioningJob.status.in_(ACTIVE_JOB_STATUSES))
        ).first()
        offer = None if active_job else next((job for job in OFFERED_JOBS if workflow_for(job).allows(tenant.status)), None)
        return Demo(plain, tenant.slug, owner.email, tenant.status, offer, active_job)


def _demo_tenant(session: Session) -> Tenant:
    """``demo``; once its site is deleted (a deleted tenant takes no job again), ``demo-2``, then
    ``demo-3``...: the banner always has a tenant to offer a job for."""
    for number in itertools.count(1):
        slug = DEMO_TENANT if number == 1 else f"{DEMO_TENANT}-{number}"
        try:
            tenant = accounts.find_tenant(session, slug)
        except NotFound:
            return accounts.create_tenant(session, slug, "Demo tenant")
        if tenant.status != TenantStatus.DELETED:
            return tenant


def _demo_standby_pool(session: Session) -> None:
    """The first time, the server keeps a pool of standby sites: the demo's create claims one,
    as a create does in production. An operator's later change of it (to 0, say) is kept."""
    server = session.scalar(select(Server).where(Server.name == DEFAULT_SERVER_NAME))
    pool_used = session.scalar(select(Tenant.id).where(Tenant.status == TenantStatus.POOL).limit(1))
    if server is not None and not server.standby_pool_size and pool_used is None:
        ServerRegistry(session, Origin(actor="quickstart")).update(server.name, standby_pool_size=DEMO_STANDBY_POOL)
        session.commit()


def _private_data_dir(settings: Settings) -> None:
    """DATA_DIR and the SQLite file readable by the service's user alone. SQLite makes its -wal and
    -shm files with the database file's mode, so making that file first covers them."""
    try:
        settings.data_dir.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
        settings.data_dir.chmod(PRIVATE_DIRECTORY_MODE)
        database = Path(make_url(settings.database_url).database)
        database.touch(mode=PRIVATE_FILE_MODE)
        database.chmod(PRIVATE_FILE_MODE)
    except OSError as error:
        raise click.ClickException(f"DATA_DIR: cannot keep the data in {settings.data_dir}: {error.strerror}") from None


def _fail_interrupted_jobs(session: Session) -> None:
    """The embedded broker keeps nothing, and no worker runs yet: a job an earlier quickstart left
    running or cancelling lost both its worker and its message (its worker was killed before it
    could record its stop). It is failed as the sweeper fails a lost worker's job: its step
    failed, saying why, the tenant released, and a retry resuming at that step."""
    JobRepairs(session).fail_interrupted_jobs("the quickstart was stopped while it ran", actor="quickstart")
    session.commit()


def _republish_pending(settings: Settings) -> None:
    with session_factory(settings.database_url)() as session:
        JobRepairs(session, dispatch=Dispatcher(settings).send_job).republish_pending(unclaimed_for=timedelta(0))
        session.commit()  # the marks of the jobs it published


def run(settings: Settings) -> int:
    """Run the Procfile's processes (and the embedded broker) until Ctrl-C; returns the exit code:
    0 when Ctrl-C stopped them, as it is meant to."""
    _require_the_extra(settings)
    _refuse_taken_ports(settings)
    # Whatever the processes write under DATA_DIR (backups) is the user's alone.
    os.umask(0o077)
    demo = prepare(settings)
    env = _process_environment(settings)
    if not settings.site_credentials_key:
        key = keep_credentials_key(settings)
        if not settings.embedded:  # only the embedded defaults read the kept key themselves
            env["SITE_CREDENTIALS_KEY"] = key
    flower_user, _, flower_password = env["FLOWER_BASIC_AUTH"].partition(":")
    click.echo(banner_text(settings, demo, flower_user, flower_password))

    with _terminal_of_our_own(), _embedded_broker(settings, env):
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", str(PROJECT_ROOT / "Procfile"), *PROCESSES],
            cwd=PROJECT_ROOT,
            env=env,
        )
        # A process manager stops the quickstart with SIGTERM, a person with Ctrl-C (SIGINT): either
        # way honcho is asked to stop its processes (Ctrl-C in a terminal reached it too; asked
        # twice, it stops them once), the broker stops after them, and the stop is a success.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            return honcho.wait()
        except KeyboardInterrupt:
            honcho.terminate()
            honcho.wait()
            return 0


@contextlib.contextmanager
def _embedded_broker(settings: Settings, env: dict[str, str]) -> Iterator[None]:
    """On the embedded defaults, the broker for the processes, stopped once they have, whatever
    happens meanwhile (it would hold its port for the next run); the messages of pending jobs
    died with the previous one, so they are sent again."""
    if not settings.embedded:
        yield
        return
    # A process group of its own, so Ctrl-C leaves it serving until the others have stopped.
    broker = subprocess.Popen([sys.executable, "-m", "provisioning.cli", "embedded-broker"], env=env, process_group=0)
    try:
        if not wait_until_answering(settings.embedded_broker_port, timeout=15):
            raise click.ClickException(f"the embedded broker did not start on port {settings.embedded_broker_port}")
        _republish_pending(settings)
        yield
    finally:
        broker.terminate()
        broker.wait()


def _require_the_extra(settings: Settings) -> None:
    """The process runner (honcho) and the embedded broker (fakeredis) are the quickstart's
    alone: a deployment installs neither, so say in one line where they come from."""
    needed = ("honcho", "fakeredis") if settings.embedded else ("honcho",)
    if missing := [name for name in needed if importlib.util.find_spec(name) is None]:
        raise click.ClickException(
            f"the quickstart needs {' and '.join(missing)}, from its extra: pip install -e '.[quickstart]' (make run does)"
        )


def wait_until_answering(port: int, timeout: float) -> bool:
    """True once something accepts connections on the port, False at the deadline."""
    attempts = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(0.1),
        retry=retry_if_exception_type(OSError),
        retry_error_callback=lambda _state: False,
    )
    return attempts(_answers, port)


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def _refuse_taken_ports(settings: Settings) -> None:
    """Stop at once, in one line, when a port the processes need is taken: else one of them
    would fail among the others' start-up lines, and honcho stop them all."""
    ports = {"PORT": settings.web_port, "FLOWER_PORT": settings.flower_port}
    if settings.embedded:
        ports["EMBEDDED_BROKER_PORT"] = settings.embedded_broker_port
    for name, port in ports.items():
        if not port_is_free(port):
            raise click.ClickException(f"port {port} ({name}) is taken by another program: stop it, or set {name} to a free port")


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As a server binds: a port whose last connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _terminal_of_our_own() -> Iterator[None]:
    """Make the quickstart's process group the terminal's foreground group while it runs.

    Ctrl-C signals every process of that group. Under ``make run`` that is make too, which then
    reports ``*** Interrupt`` and fails, though Ctrl-C is how the quickstart is meant to stop.
    In a group of its own (its children join it) only the quickstart hears Ctrl-C, stops its
    processes, and exits 0, and so does make. Ctrl-Z would stop this group alone, while the shell
    waits for make, which runs on: the terminal would hang, so it is ignored meanwhile (honcho
    inherits that). Nothing changes without a terminal, or when the quickstart already leads its
    group (started from a shell).
    """
    terminal = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if terminal is None or os.getpgrp() == os.getpid() or os.tcgetpgrp(terminal) != os.getpgrp():
        yield
        return
    previous = os.getpgrp()
    os.setpgid(0, 0)
    # A process outside the foreground group that sets the foreground group is stopped by SIGTTOU.
    with _ignoring(signal.SIGTTOU):
        os.tcsetpgrp(terminal, os.getpgrp())
    try:
        with _ignoring(signal.SIGTSTP):
            yield
    finally:
        with _ignoring(signal.SIGTTOU), contextlib.suppress(OSError):  # make may be gone
            os.tcsetpgrp(terminal, previous)


@contextlib.contextmanager
def _ignoring(signal_number: int) -> Iterator[None]:
    handler = signal.signal(signal_number, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal_number, handler)


def _process_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    # The processes run from the project root; they must find the same data directory (and the
    # credentials key kept there).
    env["DATA_DIR"] = str(settings.data_dir)
    # Honcho sets PORT to 5000 when it is unset: the ports the banner prints, given explicitly.
    env["PORT"], env["FLOWER_PORT"] = str(settings.web_port), str(settings.flower_port)
    # The processes' commands (gunicorn, celery) live beside this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("FLOWER_BASIC_AUTH", f"admin:{secrets.token_urlsafe(12)}")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("LOG_FORMAT", "console")  # honcho's pipe is no terminal, but a person reads it
    return env


def keep_credentials_key(settings: Settings) -> str:
    """The quickstart's SITE_CREDENTIALS_KEY, made once and kept beside its data (the site
    passwords stored in one run must open in the next); on the embedded defaults every process
    (and ``provisioning doctor``) finds it there."""
    path = settings.kept_credentials_key_path
    if not path.exists():
        settings.data_dir.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE), "w") as kept:
            kept.write(credentials.new_key())
    return path.read_text().strip()


def banner_text(settings: Settings, demo: Demo, flower_user: str, flower_password: str) -> str:
    base = f"http://127.0.0.1:{settings.web_port}"
    jobs = f"{base}/api/v1/provisioning/jobs"
    auth = f'-H "Authorization: Bearer {demo.token}"'
    mode = (
        f"embedded defaults (SQLite in {settings.data_dir}, in-memory broker): for trying the service only"
        if settings.embedded
        else "configured PostgreSQL and RabbitMQ"
    )
    return f"""
ERPMax provisioning, on {mode}.

  Token for {demo.owner}, owner of tenant '{demo.tenant}' (shown once, valid 30 days):
    {demo.token}

{_next_step(demo, jobs, auth)}
  API docs: {base}/docs
  Flower:   http://127.0.0.1:{settings.flower_port}  (user {flower_user}, password {flower_password})

Ctrl-C stops everything.
"""


def _next_step(demo: Demo, jobs: str, auth: str) -> str:
    """The curl lines of a job the demo tenant takes now, or of following the one it is busy with."""
    if demo.offer is not None:
        body = f'{{"job_type": "{demo.offer.value}"}}'
        return (
            f"  {OFFERED_JOBS[demo.offer]}:\n"
            f"    curl -s -X POST {jobs} {auth} -H \"Content-Type: application/json\" -d '{body}'\n"
            f"  Follow it:\n"
            f"    curl -s {jobs} {auth}\n"
        )
    if demo.active_job is not None:
        job = demo.active_job
        return (
            f"  Tenant '{demo.tenant}' is busy with a {job.job_type.value} job ({job.status.value}); follow it:\n"
            f"    curl -s {jobs}/{job.id} {auth}\n"
            f"  Once it has ended, Ctrl-C and `make run` again offer the next job.\n"
        )
    return f"  Tenant '{demo.tenant}' is {demo.tenant_status.value}; its jobs:\n    curl -s {jobs} {auth}\n"
