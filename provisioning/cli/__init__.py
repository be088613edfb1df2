"""The ``provisioning`` operator command line: schema, tenants, users, tokens, jobs, bench servers
(``cli.servers``), the sweeper, quickstart."""

from __future__ import annotations

import signal
import threading
import uuid
from datetime import datetime, timezone

import click
from alembic.util import CommandError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from provisioning.accounts import audit
from provisioning.accounts import registry as accounts
from provisioning.enums import JobStatus, JobType, Role
from provisioning.errors import ProvisioningError
from provisioning.messaging import dead_letters
from provisioning.messaging.broker import Dispatcher
from provisioning.models import ApiToken, ProvisioningJob, Tenant
from provisioning.operations import health
from provisioning.operations.sweeper import run_sweeper, sweep
from provisioning.platform import logs, migrate
from provisioning.platform.db import session_factory, utcnow
from provisioning.platform.quoting import first_line
from provisioning.platform.settings import Settings, settings_or_exit
from provisioning.sites import credentials

# Changes made at the console are the operator's: the audit trail names the login.
CONSOLE = audit.operator_at_the_console()
# PostgreSQL's code for a table that does not exist: the database was never migrated.
UNDEFINED_TABLE = "42P01"
# How many rows a listing shows at most: beyond, the database refuses the number itself.
LIMIT = click.IntRange(min=1, max=100_000)
# What --since takes: a day, or a day and a time, the minutes alone too (as the README shows).
MOMENTS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")


def _settings() -> Settings:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if root.obj is None:
        root.obj = settings_or_exit()
    return root.obj


def _session():
    return session_factory(_settings().database_url)()


class OneLineErrors(click.Group):
    """Turns a domain error, a migration error or a database error into one ``Error: ...`` line and exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ProvisioningError as error:
            raise click.ClickException(str(error)) from None
        except CommandError as error:  # Alembic's: a revision it does not know, say
            raise click.ClickException(f"migrations: {first_line(error)}") from None
        except SQLAlchemyError as error:
            raise click.ClickException(_database_error(error)) from None


def _database_error(error: SQLAlchemyError) -> str:
    """The database's own first line, never SQLAlchemy's whole text: that quotes the statement
    and its parameters, which may hold a token's hash or a password."""
    reason = first_line(error) if isinstance(error, DBAPIError) else type(error).__name__
    if getattr(getattr(error, "orig", None), "pgcode", None) == UNDEFINED_TABLE or "no such table" in reason:
        return f"the database has no schema yet ({reason}); run: provisioning db upgrade"
    if isinstance(error, OperationalError):
        return f"cannot reach the database: {reason}"
    return f"database error: {reason}"


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Operate the provisioning service: schema, tenants, users, tokens and jobs."""


@main.group()
def db() -> None:
    """The database schema (Alembic migrations)."""


def _known_revision(_ctx, _param, revision: str) -> str:
    """Only ``head`` or a revision of ours: Alembic's own parsing fails an assertion on some
    strings (an empty one, ``@``, ``head+5``)."""
    known = ["head", *migrate.revisions()]
    if revision not in known:
        raise click.BadParameter(f"{revision[:40]!r} is not one of {', '.join(known)}")
    return revision


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, callback=_known_revision, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Apply the migrations up to REVISION; the only way the schema is created or changed."""
    migrate.upgrade(_settings().database_url, revision)
    click.echo(f"database at revision {migrate.current_revision(_settings().database_url)}")


@db.command("current")
def db_current() -> None:
    """Print the schema revision the database is at."""
    click.echo(migrate.current_revision(_settings().database_url) or "empty (run: provisioning db upgrade)")


@main.group()
def tenant() -> None:
    """Tenants: one customer, one ERPNext site."""


@tenant.command("create")
@click.option("--slug", required=True, help="Short lowercase name; becomes part of the site name.")
@click.option("--name", required=True, help="The customer's display name.")
def tenant_create(slug: str, name: str) -> None:
    """Create a tenant (status pending, no site yet)."""
    with _session() as session:
        created = accounts.create_tenant(session, slug, name, origin=CONSOLE)
        click.echo(f"tenant {created.slug} created with id {created.id}")


@tenant.command("list")
def tenant_list() -> None:
    """List tenants with their status."""
    with _session() as session:
        tenants = session.scalars(select(Tenant).order_by(Tenant.slug)).all()
    for row in tenants:
        click.echo(f"{row.slug}\t{row.status.value}\t{row.id}\t{row.name}")
    _count(len(tenants), "tenant")


@main.group()
def user() -> None:
    """Users and their role in a tenant."""


@user.command("create")
@click.option("--email", required=True)
@click.option("--tenant", "tenant_slug", help="Tenant slug to make the user a member of.")
@click.option("--role", type=click.Choice([role.value for role in Role]), help="Role in that tenant.")
@click.option("--superuser", is_flag=True, help="A platform operator, who may act on any tenant.")
def user_create(email: str, tenant_slug: str | None, role: str | None, superuser: bool) -> None:
    """Create a user, a member of one tenant (or a platform operator with --superuser)."""
    if bool(tenant_slug) != bool(role):
        raise click.UsageError("--tenant and --role go together")
    if not tenant_slug and not superuser:
        raise click.UsageError("give --tenant and --role, or --superuser")
    with _session() as session:
        chosen = accounts.find_tenant(session, tenant_slug) if tenant_slug else None
        created = accounts.create_user(session, email, is_superuser=superuser, origin=CONSOLE)
        if chosen is not None:
            accounts.add_membership(session, created, chosen, Role(role), origin=CONSOLE)
        click.echo(f"user {created.email} created" + (f" as {role} of {chosen.slug}" if chosen else " as operator"))


@user.command("add-membership")
@click.option("--email", required=True)
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--role", required=True, type=click.Choice([role.value for role in Role]))
def user_add_membership(email: str, tenant_slug: str, role: str) -> None:
    """Give an existing user a role in another tenant."""
    with _session() as session:
        member, tenant_ = accounts.find_user(session, email), accounts.find_tenant(session, tenant_slug)
        accounts.add_membership(session, member, tenant_, Role(role), origin=CONSOLE)
        click.echo(f"{email} is now {role} of {tenant_slug}")


@main.group()
def token() -> None:
    """API tokens: shown once, stored hashed."""


@token.command("revoke")
@click.argument("token_id", type=click.UUID)
def token_revoke(token_id: uuid.UUID) -> None:
    """Revoke the token with id TOKEN_ID (see `token list`)."""
    with _session() as session:
        revoked = accounts.revoke_token(session, token_id, origin=CONSOLE)
        click.echo(f"token {revoked.id} revoked at {revoked.revoked_at.isoformat()}")


@token.command("list")
@click.option("--email", required=True)
def token_list(email: str) -> None:
    """List a user's tokens (id, prefix, state, scopes, name, last use); never the tokens. A token
    made before scopes shows "as-role": it may do all its user's role allows."""
    with _session() as session:
        owner = accounts.find_user(session, email)
        tokens = session.scalars(select(ApiToken).where(ApiToken.user_id == owner.id).order_by(ApiToken.created_at)).all()
    for row in tokens:
        state = accounts.token_refusal(row.revoked_at, row.expires_at, utcnow()) or "usable"
        last_used = row.last_used_at.isoformat() if row.last_used_at else "never used"
        scopes = ",".join(row.scopes) if row.scopes is not None else "as-role"
        click.echo(f"{row.id}\t{row.prefix}...\t{state}\t{scopes}\t{row.name}\t{last_used}")
    _count(len(tokens), "token")


@main.group()
def jobs() -> None:
    """Provisioning jobs."""


@jobs.command("list")
@click.option("--tenant", "tenant_slug", help="Only this tenant's jobs.")
@click.option("--status", type=click.Choice([status.value for status in JobStatus]))
@click.option("--type", "job_type", type=click.Choice([job_type.value for job_type in JobType]), help="Such as refill_pool.")
@click.option("--limit", default=50, show_default=True, type=LIMIT)
def jobs_list(tenant_slug: str | None, status: str | None, job_type: str | None, limit: int) -> None:
    """List jobs, newest first (the standby pools' too: their tenants are pool.<server id>)."""
    with _session() as session:
        query = select(ProvisioningJob, Tenant.slug).join(Tenant, Tenant.id == ProvisioningJob.tenant_id)
        if tenant_slug is not None:  # an empty one names no tenant: it must not list them all
            query = query.where(ProvisioningJob.tenant_id == accounts.find_tenant(session, tenant_slug).id)
        if status:
            query = query.where(ProvisioningJob.status == JobStatus(status))
        if job_type:
            query = query.where(ProvisioningJob.job_type == JobType(job_type))
        listed = session.execute(query.order_by(ProvisioningJob.created_at.desc()).limit(limit)).all()
    for job, slug in listed:
        click.echo(
            f"{job.id}\t{slug}\t{job.job_type.value}\t{job.status.value}\t{job.progress}%\t"
            f"{job.created_at.isoformat(timespec='seconds')}\t{job.error or job.message}"
        )
    _count(len(listed), "job")


@jobs.command("sweep")
def jobs_sweep() -> None:
    """Do now what the sweeper does every SWEEP_INTERVAL_SECONDS: fail jobs whose worker was lost
    (no heartbeat for LOST_JOB_AFTER_SECONDS) and publish again pending jobs never published, or
    published UNCLAIMED_JOB_AFTER_SECONDS ago and never claimed."""
    settings = _settings()
    report = sweep(settings, session_factory(settings.database_url), Dispatcher(settings).send_job)
    click.echo(f"failed {len(report.reaped)} lost job(s); published {len(report.republished)} pending job(s) again")


@main.command("sweeper")
def sweeper() -> None:
    """Run the sweeper (the Procfile's `sweeper`, one per deployment) until SIGTERM or Ctrl-C:
    `jobs sweep` every SWEEP_INTERVAL_SECONDS, and the relay of job events to their exchange."""
    settings = _settings()
    logs.configure("sweeper", settings.log_format, settings.log_level)
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    run_sweeper(settings, stop)


@main.group("audit")
def audit_group() -> None:
    """The audit trail: who did what, when, and from where."""


@audit_group.command("list")
@click.option("--tenant", "tenant_slug", help="Only this tenant's entries.")
@click.option(
    "--since", type=click.DateTime(MOMENTS), help="Only entries from this UTC time on (e.g. 2026-11-28 or 2026-11-28T09:00)."
)
@click.option("--limit", default=100, show_default=True, type=LIMIT)
def audit_list(tenant_slug: str | None, since: datetime | None, limit: int) -> None:
    """List audit entries, newest first: time, actor, action, target, address, user agent, detail."""
    with _session() as session:
        tenant_id = accounts.find_tenant(session, tenant_slug).id if tenant_slug is not None else None
        since_utc = since.replace(tzinfo=timezone.utc) if since else None
        entries = audit.entries(session, tenant_id=tenant_id, since=since_utc, limit=limit)
    for entry in entries:
        click.echo(
            f"{entry.created_at.isoformat(timespec='seconds')}\t{entry.actor}\t{entry.action}\t{entry.target}\t"
            f"{entry.ip or '-'}\t{entry.user_agent or '-'}\t{entry.detail}"
        )
    _count(len(entries), "audit entry", "audit entries")


def _count(count: int, noun: str, plural: str = "") -> None:
    """How many a listing showed, on standard error (standard output stays the rows alone): an
    empty listing then says so instead of printing nothing."""
    click.echo(f"{count} {noun if count == 1 else plural or noun + 's'}", err=True)


@main.command("credentials-key")
def credentials_key() -> None:
    """Print a new key for SITE_CREDENTIALS_KEY, which encrypts the sites' admin passwords."""
    click.echo(credentials.new_key())
    click.echo(
        "Set it as SITE_CREDENTIALS_KEY and keep it: losing or changing it makes the stored admin passwords unreadable.",
        err=True,
    )


@main.command()
def doctor() -> None:
    """Check the configuration, database, migrations, broker, queues and workers, one line each,
    with what to do about a failure; exits 1 if any check fails."""
    checks = health.doctor(_settings())
    for check in checks:
        click.echo(check.line())
    if not all(check.ok for check in checks):
        raise SystemExit(1)


@main.group()
def dlq() -> None:
    """The dead-letter queue: messages the workers could not handle, with the reason why."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, type=LIMIT)
def dlq_list(limit: int) -> None:
    """Show dead letters (id, task, reason, body) without taking them out of the queue."""
    letters = dead_letters.list_dead_letters(_settings(), limit)
    for letter in letters:
        click.echo(f"{letter.id}\t{letter.task or '-'}\t{letter.reason}\t{letter.body}")
    _count(len(letters), "dead letter")


@dlq.command("replay")
@click.argument("dead_letter_id")
def dlq_replay(dead_letter_id: str) -> None:
    """Send the dead letter DEAD_LETTER_ID back to the job queue as it was first sent."""
    if not dead_letters.replay(_settings(), dead_letter_id):
        raise click.ClickException(f"no dead letter with id {dead_letter_id!r}")
    click.echo(f"replayed {dead_letter_id}")


@dlq.command("purge")
@click.confirmation_option(prompt="Delete every dead letter?")
def dlq_purge() -> None:
    """Delete every dead letter."""
    purged = dead_letters.purge(_settings())
    click.echo(f"purged {purged} dead letter{'' if purged == 1 else 's'}")


@main.command()
def quickstart() -> None:
    """Prepare a demo tenant and token, then run web, worker and Flower until Ctrl-C (`make run`)."""
    from provisioning.operations import quickstart as quickstart_module

    raise SystemExit(quickstart_module.run(_settings()))


@main.command("embedded-broker")
def embedded_broker() -> None:
    """Run the quickstart's in-memory broker on EMBEDDED_BROKER_PORT (for trying the service only)."""
    from provisioning.operations.embedded_broker import serve

    port = _settings().embedded_broker_port
    try:
        serve(port)
    except OSError as error:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port} (EMBEDDED_BROKER_PORT): {error.strerror}") from None


# Last: their commands use this module's helpers (and the accounts' join its groups).
from provisioning.cli import accounts_commands  # noqa: E402, F401
from provisioning.cli.servers import server  # noqa: E402

main.add_command(server)
