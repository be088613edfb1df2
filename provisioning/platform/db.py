"""SQLAlchemy base, engine, session factory and the unit of work: the caller of a session owns its transaction."""

from __future__ import annotations

import logging
import select
from datetime import datetime, timezone
from functools import lru_cache
from typing import Callable

from sqlalchemy import JSON, DateTime, MetaData, Select, bindparam, column, create_engine, event, func
from sqlalchemy import select as select_
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import TypeDecorator

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


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def page_of(session: Session, query: Select, page: int, size: int) -> tuple[list, int]:
    """One page of ``query``'s rows (ordered by the caller), and how many rows there are in all: the
    paging every listing of the API shares, here because accounts and webhooks both list."""
    total = session.scalar(select_(func.count()).select_from(query.order_by(None).subquery()))
    return list(session.execute(query.limit(size).offset((page - 1) * size))), total


def as_text(moment: datetime | None) -> str | None:
    """A moment as text PostgreSQL reads back exactly, for ``json_rows``."""
    return None if moment is None else moment.isoformat()


def json_rows(name: str, /, **columns) -> TableValuedAlias:
    """A table named ``name`` of the ``columns`` (``column=type``) whose rows are bound as one JSON
    list of objects, ``:{name}``, and read by ``json_to_recordset`` (PostgreSQL). The statement's
    text stays the same whatever the rows, so it is compiled (and prepared) once; and the rows
    cost the driver one parameter to send, not an array per column."""
    return (
        func.json_to_recordset(bindparam(name, type_=JSON))
        .table_valued(*(column(column_name, type_) for column_name, type_ in columns.items()))
        .render_derived(name=name, with_types=True)
    )


@lru_cache(maxsize=None)
def get_engine(database_url: str) -> Engine:
    """One engine (and pool) per URL per process. A forked process inherits the cached engine:
    it must ``dispose(close=False)`` it before use (Celery's pool processes do, at start), or open
    no connection before the fork (gunicorn's master does not).

    A pooled connection the server closed (a restarted PostgreSQL, a killed backend) is found
    at checkout (``_closed_by_the_server``), and the pool opens a fresh one instead of failing a
    request or a job's step. A connection that dies while in use fails its transaction; whoever
    owns the transaction may run it again (``PatientService`` does).
    """
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    engine = create_engine(
        database_url,
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
        },
    )
    event.listen(engine, "checkout", _closed_by_the_server)
    event.listen(engine, "invalidate", _note_dead_connection)
    return engine


def _closed_by_the_server(dbapi_connection, _record, _proxy) -> None:
    """Refuse a pooled connection whose socket has something to read: PostgreSQL sends nothing to
    an idle connection that listens to no channel, except the error and the end of the stream
    with which it closes one. SQLAlchemy then opens a new connection in its place.

    ``pool_pre_ping`` asks the same with a ``SELECT 1``: a round trip at every checkout, two per
    create request. This looks at the socket instead, at no cost to either side.
    """
    if dbapi_connection.closed or select.select([dbapi_connection], [], [], 0)[0]:
        raise DisconnectionError("the server closed the connection while it was in the pool")


def _note_dead_connection(_dbapi_connection, _record, error: BaseException | None) -> None:
    """Say so when a pooled connection was found dead (by the check at checkout, or in use)."""
    if error is not None:
        log.warning("a pooled database connection was dead (%s); a new one takes its place", first_line(error))


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


class UnitOfWork:
    """A session's transaction, owned by whoever made it (an API view, a command, the sweeper, the
    runner's call wrapper): services write into it and never commit or roll back.

    What must happen only once the transaction is committed (publishing a new job's message: a
    worker must never receive a job it cannot read) is given to ``after_commit``; ``commit`` runs
    it right after the commit, in order, and commits what each such action wrote (its own short
    transaction). An action that fails is logged and the rest still run: whatever it left undone
    is repaired later (an unpublished job is published by the next sweep). ``rollback`` drops them.
    """

    def __init__(self, session: Session):
        self.session = session
        self._after_commit: list[Callable[[], None]] = []

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after_commit.append(action)

    def commit(self) -> None:
        self.session.commit()
        while self._after_commit:
            action = self._after_commit.pop(0)
            try:
                action()
                self.session.commit()
            except Exception:
                self.session.rollback()
                log.exception("after a commit, %s failed; it is left to the next repair", getattr(action, "__name__", action))

    def rollback(self) -> None:
        self._after_commit.clear()
        self.session.rollback()

