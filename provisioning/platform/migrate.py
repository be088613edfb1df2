"""Applying the Alembic migrations, the only way the schema is ever created or changed, and telling
where a database's schema stands against them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, pool, text

PROJECT_ROOT = Path(__file__).resolve().parents[2]
UPGRADE_COMMAND = "provisioning db upgrade"
VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class SchemaState:
    """A database's revision beside the one this code expects."""

    current: str | None  # None: no migration ever ran
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    @property
    def ahead(self) -> bool:
        """At a revision this code does not know: a later release's, migrated ahead of it."""
        return self.current is not None and self.current not in _known_revisions()

    @property
    def behind(self) -> bool:
        """Missing, or at an earlier revision of ours: this code would meet tables and columns that
        are not there yet. A revision this code does not know is a later release's, migrated ahead
        of it (a deploy in progress): that is not behind."""
        return self.current is None or (not self.at_head and not self.ahead)

    def describe(self) -> str:
        return f"database at {self.current or 'nothing'}, code expects {self.head}"


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    # ConfigParser treats % specially; URLs may carry %-escaped passwords.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def schema_state(connection: Connection) -> SchemaState:
    """Read the database's revision (two short queries; no table of ours is touched, so it works on
    an empty database too). Alembic's MigrationContext would do the same and log two lines each time."""
    current = None
    if inspect(connection).has_table(VERSION_TABLE):
        current = connection.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}"))
    return SchemaState(current, head_revision())


def current_revision(database_url: str) -> str | None:
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return schema_state(connection).current
    finally:
        engine.dispose()


def head_revision() -> str:
    """The revision the code expects the database to be at."""
    return _scripts().get_current_head()


def revisions() -> list[str]:
    """Every revision the code knows, oldest first."""
    return [script.revision for script in reversed(list(_scripts().walk_revisions()))]


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    """Read once per process (a tenth of a /readyz otherwise): the migration files do not change
    under a running process, as a release that brings new ones restarts it."""
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


@lru_cache(maxsize=1)
def _known_revisions() -> frozenset[str]:
    return frozenset(revisions())
