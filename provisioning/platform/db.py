"""SQLAlchemy base, engine and session factory; the caller of a session owns its transaction."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from functools import lru_cache

import psycopg2
from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from provisioning.platform.pg_batching import BatchingConnection
from provisioning.platform.quoting import first_line

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator):
    """A timestamp that is always timezone-aware UTC in Python, on PostgreSQL and SQLite alike.

    SQLite drops the zone; without this the API would print naive times for the quickstart.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


# A pooled connection idle longer than this is checked before use (see _ping_if_idle).
PING_AFTER_IDLE_SECONDS = 1.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@lru_cache(maxsize=None)
def get_engine(database_url: str) -> Engine:
    """One engine (and pool) per URL per process. A forked process inherits the cached engine:
    it must ``dispose(close=False)`` it before use (Celery's pool processes do, at start), or open
    no connection before the fork (gunicorn's master does not)."""
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    engine = create_engine(
        database_url,
        # An UPDATE of many rows goes in one round trip, not one per row.
        executemany_mode="values_plus_batch",
        pool_size=5,
        max_overflow=5,
        pool_timeout=5,
        connect_args={
            "connect_timeout": 5,
            "application_name": "erpmax-provisioning",
            # A database that stops answering (rather than refusing) must not hang a request or a
            # job forever: statements give up after 30 s, dead connections are noticed in ~25 s.
            "options": "-c statement_timeout=30000",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            # BEGIN with the first statement, COMMIT with the last, statements run later in between.
            "connection_factory": BatchingConnection,
        },
    )
    event.listen(engine, "connect", _note_use)
    event.listen(engine, "checkin", _note_use)
    event.listen(engine, "checkout", _ping_if_idle)
    event.listen(engine, "do_execute", _execute_retrying_a_dead_connection)
    event.listen(engine, "do_execute_no_params", _execute_no_params_retrying_a_dead_connection)
    return engine


def _note_use(_dbapi_connection, record) -> None:
    record.info["used_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
    """Check a pooled connection before use if it sat idle for a while: a restarted PostgreSQL
    leaves dead connections behind, and the pool then opens a fresh one instead of failing.

    SQLAlchemy's ``pool_pre_ping`` does the same at every checkout, a round trip per request and
    two per job; a connection in steady use (or just opened) goes without: if the server closed
    it meanwhile, its transaction's first statement runs again on a new one
    (``_execute_retrying_a_dead_connection``).
    """
    if time.monotonic() - record.info.get("used_at", float("-inf")) < PING_AFTER_IDLE_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()
    except psycopg2.Error as error:
        raise DisconnectionError(f"a pooled connection is dead: {error}") from error


def _execute_retrying_a_dead_connection(cursor, statement: str, parameters, context) -> bool | None:
    """Run the first statement of a transaction again, once, on a new connection if it met a dead one.

    A connection the server closed while it sat in the pool for less than
    ``PING_AFTER_IDLE_SECONDS`` (``pg_terminate_backend``, a PostgreSQL restart) is found dead
    only when used: that one use would fail a request (503) or a job's step although the
    database is up. When it is the first statement of a transaction
    (``BatchingConnection.opens_a_transaction``), nothing of the transaction reached the server
    before it, and whatever of it did died with the connection (the server rolls back an open
    transaction whose connection is gone), so it is safe to send it again on a new connection.
    Any other statement fails as before: a later statement of a transaction, whose earlier ones
    are lost; a COMMIT, whose outcome is unknown (commits never come through here); a statement
    sent with others deferred before it, or in autocommit. If no new connection can be made,
    the statement's own error stands (SQLAlchemy then handles the disconnect as ever). On the
    normal path this costs a look at the connection's state, no round trip. Returns None to let
    SQLAlchemy execute the statement itself, True when it was executed here.
    """
    return _retrying(cursor, context, lambda live_cursor: live_cursor.execute(statement, parameters))


def _execute_no_params_retrying_a_dead_connection(cursor, statement: str, context) -> bool | None:
    return _retrying(cursor, context, lambda live_cursor: live_cursor.execute(statement))


def _retrying(cursor, context, execute) -> bool | None:
    dbapi_connection = cursor.connection
    if cursor.name is not None or not (
        isinstance(dbapi_connection, BatchingConnection) and dbapi_connection.opens_a_transaction()
    ):
        return None
    try:
        execute(cursor)
    except psycopg2.Error as error:
        if not context.dialect.is_disconnect(error, dbapi_connection, cursor):
            raise
        log.warning("a pooled database connection was dead (%s); the transaction starts again on a new one", first_line(error))
        context.cursor = _reconnected(context.root_connection.connection, error).cursor()
        execute(context.cursor)
    return True


def _reconnected(pooled, error: Exception):
    """A new DBAPI connection in place of the dead one under a checked-out connection, as
    SQLAlchemy's pool makes for one found dead at checkout (it has no public call for a checked-out
    one, hence its record's)."""
    record = pooled._connection_record
    record.invalidate(error)
    try:
        pooled.dbapi_connection = record.get_connection()
    except Exception as failure:
        raise error from failure
    return pooled.dbapi_connection


def _tune_sqlite(dbapi_connection, _record) -> None:
    """WAL lets the quickstart's web and worker processes read while the other writes."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@lru_cache(maxsize=None)
def session_factory(database_url: str) -> sessionmaker[Session]:
    """The process's factory for this URL. One, not one per job or request: each sessionmaker
    makes a Session class of its own, whose event dispatch SQLAlchemy then builds again."""
    return new_session_factory(database_url)


def new_session_factory(database_url: str) -> sessionmaker[Session]:
    """A factory of the caller's own, to configure without touching everyone's sessions."""
    return sessionmaker(bind=get_engine(database_url), expire_on_commit=False)


def is_connection_failure(error: DBAPIError) -> bool:
    """True when the database could not be reached or dropped the connection: an outage, not a bug."""
    return error.connection_invalidated or isinstance(error, OperationalError)
