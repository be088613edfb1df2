"""The accounts' commands of scopes and lifetimes: ``token create``, ``token revoke-all``,
``user remove-membership``, ``user change-role`` and ``user disable``, through the same functions
as the API; each audited."""

from __future__ import annotations

from datetime import timedelta

import click

from provisioning.accounts import registry as accounts
from provisioning.cli import CONSOLE, _session, _settings, token, user
from provisioning.enums import Role, Scope

ROLES = click.Choice([role.value for role in Role])


@user.command("remove-membership")
@click.option("--email", required=True)
@click.option("--tenant", "tenant_slug", required=True)
def user_remove_membership(email: str, tenant_slug: str) -> None:
    """Take a user out of a tenant, revoking their tokens bound to it (never its last owner)."""
    with _session() as session:
        member, tenant = accounts.find_user(session, email), accounts.find_tenant(session, tenant_slug)
        accounts.remove_membership(session, tenant, member.id, origin=CONSOLE)
        click.echo(f"{member.email} is no longer a member of {tenant.slug}")


@user.command("change-role")
@click.option("--email", required=True)
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--role", required=True, type=ROLES)
def user_change_role(email: str, tenant_slug: str, role: str) -> None:
    """Change a member's role in a tenant (the last owner cannot be demoted)."""
    with _session() as session:
        member, tenant = accounts.find_user(session, email), accounts.find_tenant(session, tenant_slug)
        accounts.change_role(session, tenant, member.id, Role(role), origin=CONSOLE)
        click.echo(f"{member.email} is now {role} of {tenant.slug}")


@user.command("disable")
@click.option("--email", required=True)
def user_disable(email: str) -> None:
    """Disable a user and revoke every token of theirs at once; they get no new one."""
    with _session() as session:
        disabled = accounts.find_user(session, email)
        revoked = accounts.disable_user(session, disabled, origin=CONSOLE)
        click.echo(f"{disabled.email} disabled at {disabled.disabled_at.isoformat()}; {revoked} token(s) revoked")


@token.command("revoke-all")
@click.option("--email", required=True)
def token_revoke_all(email: str) -> None:
    """Revoke every token of a user at once (a leak, a departure)."""
    with _session() as session:
        holder = accounts.find_user(session, email)
        revoked = accounts.revoke_all_tokens(session, holder, origin=CONSOLE)
        click.echo(f"{revoked} token(s) of {holder.email} revoked")


@token.command("create")
@click.option("--email", required=True, help="The user the token acts as.")
@click.option("--name", default="", help="What the token is for.")
@click.option(
    "--expires-days",
    type=click.IntRange(min=1, max=accounts.MAX_TOKEN_LIFETIME.days),
    help="Days until it expires (default and most: TOKEN_MAX_LIFETIME_DAYS).",
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice([scope.value for scope in Scope]),
    help="What it may do; repeatable (default: all the user's role allows).",
)
@click.option("--tenant", "tenant_slug", help="Bind it to this tenant of the user's: it acts for it alone.")
def token_create(email: str, name: str, expires_days: int | None, scopes: tuple[str, ...], tenant_slug: str | None) -> None:
    """Create a token and print it alone on the last line; it cannot be shown again."""
    with _session() as session:
        owner = accounts.find_user(session, email)
        created, plain = accounts.issue_token(
            session,
            owner,
            name=name,
            expires_in=timedelta(days=expires_days) if expires_days else None,
            origin=CONSOLE,
            scopes=frozenset(map(Scope, scopes)) or None,
            tenant=accounts.find_tenant(session, tenant_slug) if tenant_slug is not None else None,
            max_lifetime=timedelta(days=_settings().token_max_lifetime_days),
        )
        click.echo(
            f"token {created.id} for {owner.email} (scopes {','.join(created.scopes)}; expires "
            f"{created.expires_at.isoformat()}); keep it now, it is not stored:"
        )
        click.echo(plain)
