"""``provisioning server``: the registry of bench servers, from the console; each change audited."""

from __future__ import annotations

from datetime import timedelta

import click

from provisioning.cli import CONSOLE, _count, _session, _settings
from provisioning.enums import ServerStatus
from provisioning.jobs.repairs import JobRepairs
from provisioning.messaging.broker import Dispatcher
from provisioning.platform.db import UnitOfWork
from provisioning.servers.registry import DEFAULT_CAPACITY, MAX_CAPACITY, ServerRegistry, ServerView
from provisioning.servers.standby import MAX_BATCH, MAX_POOL_SIZE


def _labels(_ctx, _param, given: tuple[str, ...]) -> dict[str, str] | None:
    """``--label region=eu`` (repeatable) as a mapping; none given: None."""
    if not given:
        return None
    labels = {}
    for label in given:
        name, equals, value = label.partition("=")
        if not equals:
            raise click.BadParameter(f"{label!r} is not NAME=VALUE")
        labels[name] = value
    return labels


CAPACITY = click.IntRange(min=1, max=MAX_CAPACITY)
LABELS = click.option("--label", "labels", multiple=True, callback=_labels, help="NAME=VALUE, such as region=eu; repeatable.")


@click.group()
def server() -> None:
    """Bench servers: where sites are placed, each with its own job queue."""


@server.command("add")
@click.argument("name")
@click.option("--capacity", default=DEFAULT_CAPACITY, show_default=True, type=CAPACITY, help="Most sites.")
@LABELS
def server_add(name: str, capacity: int, labels: dict[str, str] | None) -> None:
    """Add the active server NAME; start its workers with SERVER_NAME=NAME."""
    with _session() as session:
        added = ServerRegistry(session, CONSOLE).add(name, capacity, labels)
        session.commit()
        click.echo(f"server {added.name} added; its workers take jobs from {_settings().queue_of_server(added.name)}")


@server.command("queue")
def server_queue() -> None:
    """Print the job queue of this machine's server (SERVER_NAME): what its worker's -Q names."""
    click.echo(_settings().worker_queue_name)


@server.command("list")
@click.option("--status", type=click.Choice([status.value for status in ServerStatus]))
def server_list(status: str | None) -> None:
    """List servers: name, status, sites/capacity, active jobs, queue, labels."""
    with _session() as session:
        views, total = ServerRegistry(session, CONSOLE).list(1, 100_000, ServerStatus(status) if status else None)
    for view in views:
        click.echo(_row(view))
    _count(total, "server")


@server.command("update")
@click.argument("name")
@click.option("--capacity", type=CAPACITY, help="Most sites.")
@LABELS
@click.option("--standby-pool", type=click.IntRange(0, MAX_POOL_SIZE), help="Ready standby sites to keep; 0: none.")
@click.option("--standby-batch", type=click.IntRange(1, MAX_BATCH), help="Most standby sites one pool job makes.")
def server_update(
    name: str, capacity: int | None, labels: dict[str, str] | None, standby_pool: int | None, standby_batch: int | None
) -> None:
    """Change the capacity, the labels (all of them) or the standby pool of server NAME."""
    with _session() as session:
        updated = ServerRegistry(session, CONSOLE).update(name, capacity, labels, standby_pool, standby_batch)
        session.commit()
        click.echo(
            f"server {updated.name}: capacity {updated.capacity}, labels {_labels_text(updated.labels)}, "
            f"standby pool {updated.standby_pool_size} (batch {updated.standby_batch})"
        )


def _status_command(status: ServerStatus, help_text: str):
    @server.command(_COMMAND_OF_STATUS[status], help=help_text)
    @click.argument("name")
    def change(name: str) -> None:
        settings = _settings()
        with _session() as session:
            changed = ServerRegistry(session, CONSOLE).set_status(name, status)
            session.commit()
            click.echo(f"server {changed.name} is {changed.status.value}")
            if status == ServerStatus.ACTIVE:
                # Its held jobs go now, not at the next sweep.
                uow = UnitOfWork(session)
                sent = JobRepairs(uow, dispatch=Dispatcher(settings).send_job).republish_pending(
                    timedelta(seconds=settings.unclaimed_job_after_seconds)
                )
                uow.commit()
                click.echo(f"sent {len(sent)} waiting job(s)")

    return change


_COMMAND_OF_STATUS = {ServerStatus.DRAINING: "drain", ServerStatus.ACTIVE: "activate", ServerStatus.DOWN: "down"}
_status_command(ServerStatus.DRAINING, "Take no new sites on server NAME; its sites and their jobs stay (move them to empty it).")
_status_command(ServerStatus.ACTIVE, "Make server NAME active: it takes new sites, and its held jobs are sent.")
_status_command(ServerStatus.DOWN, "Mark server NAME down: its jobs are held, pending, until it is active again.")


@server.command("remove")
@click.argument("name")
def server_remove(name: str) -> None:
    """Remove server NAME from the registry; refused while it holds any site."""
    with _session() as session:
        ServerRegistry(session, CONSOLE).remove(name)
        session.commit()
        click.echo(f"server {name} removed")


def _row(view: ServerView) -> str:
    row = view.server
    return (
        f"{row.name}\t{row.status.value}\t{row.site_count}/{row.capacity} sites\t{view.active_jobs} active job(s)\t"
        f"standby {view.standby_ready} ready, {view.standby_making} making of {row.standby_pool_size}\t"
        f"{_settings().queue_of_server(row.name)}\t{_labels_text(row.labels)}"
    )


def _labels_text(labels: dict) -> str:
    return ",".join(f"{name}={value}" for name, value in sorted(labels.items())) or "-"
