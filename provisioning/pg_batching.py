"""A psycopg2 connection that sends each transaction in as few round trips as it can.

psycopg2 sends BEGIN, every statement and COMMIT as round trips of their own, so a transaction of
four statements costs six; on a busy machine a round trip costs both sides about as much CPU as a
short statement. This connection keeps libpq in autocommit mode and runs the transaction itself:
BEGIN goes with the transaction's first statement, and statements whose result nobody reads
(marked ``DEFERRABLE``: events, audit entries, step writes) wait and go with the next statement,
or with COMMIT, in one query. PostgreSQL runs the same statements, in the same order, in the same
transaction; only the error of a deferred statement is raised later, by the next round trip,
where it fails the transaction as it would have anyway.

SQLAlchemy needs to know nothing of it: it calls ``execute``, ``commit`` and ``rollback`` as on any
psycopg2 connection, and asking it for ``AUTOCOMMIT`` gets plain autocommit.
"""

from __future__ import annotations

import psycopg2
from psycopg2 import extensions
from sqlalchemy import event
from sqlalchemy.engine import Engine

# The execution option that lets a statement wait for the transaction's next round trip.
DEFERRABLE = {"deferrable": True}

_LIBPQ_AUTOCOMMIT = extensions.connection.autocommit
_IDLE = extensions.TRANSACTION_STATUS_IDLE
_BEGIN = {
    extensions.ISOLATION_LEVEL_DEFAULT: b"BEGIN",
    extensions.ISOLATION_LEVEL_READ_COMMITTED: b"BEGIN ISOLATION LEVEL READ COMMITTED",
    extensions.ISOLATION_LEVEL_READ_UNCOMMITTED: b"BEGIN ISOLATION LEVEL READ UNCOMMITTED",
    extensions.ISOLATION_LEVEL_REPEATABLE_READ: b"BEGIN ISOLATION LEVEL REPEATABLE READ",
    extensions.ISOLATION_LEVEL_SERIALIZABLE: b"BEGIN ISOLATION LEVEL SERIALIZABLE",
}


class BatchingConnection(extensions.connection):
    """Pass as ``connection_factory``; ``round_trips`` counts the queries sent."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _LIBPQ_AUTOCOMMIT.__set__(self, True)
        self._begin: bytes | None = b"BEGIN"  # None: the caller asked for autocommit
        self._deferred: list[bytes] = []
        self.round_trips = 0

    @property
    def autocommit(self) -> bool:
        return self._begin is None

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self.set_isolation_level(extensions.ISOLATION_LEVEL_AUTOCOMMIT if value else extensions.ISOLATION_LEVEL_DEFAULT)

    def set_isolation_level(self, level: int) -> None:
        """What SQLAlchemy calls for ``isolation_level`` (and to put it back): the BEGIN to send."""
        if self._in_transaction() or self._deferred:
            raise psycopg2.ProgrammingError("the isolation level cannot change inside a transaction")
        self._begin = None if level == extensions.ISOLATION_LEVEL_AUTOCOMMIT else _BEGIN[level]

    def cursor(self, *args, **kwargs):
        kwargs.setdefault("cursor_factory", BatchingCursor)
        return super().cursor(*args, **kwargs)

    def commit(self) -> None:
        if self._begin is not None and (self._deferred or self._in_transaction()):
            try:
                self._send([*self._opening(), *self._take_deferred(), b"COMMIT"])
            except BaseException:
                self.rollback()  # a deferred statement failed: its transaction is still open, aborted
                raise

    def rollback(self) -> None:
        self._deferred.clear()
        if self._in_transaction():
            self._send([b"ROLLBACK"])

    def _opening(self) -> list[bytes]:
        return [] if self._begin is None or self._in_transaction() else [self._begin]

    def _take_deferred(self) -> list[bytes]:
        taken, self._deferred = self._deferred, []
        return taken

    def _in_transaction(self) -> bool:
        return self.info.transaction_status != _IDLE

    def _send(self, statements: list[bytes]) -> None:
        with super().cursor() as cursor:
            self.round_trips += 1
            cursor.execute(b";".join(statements))


class BatchingCursor(extensions.cursor):
    def execute(self, query, vars=None):
        connection = self.connection
        before = [*connection._opening(), *connection._take_deferred()]
        connection.round_trips += 1
        if not before:
            return super().execute(query, vars)
        if self.name is not None:  # a server-side cursor makes its DECLARE of this query alone
            connection._send(before)
            return super().execute(query, vars)
        return super().execute(b";".join([*before, self.mogrify(query, vars)]))

    def executemany(self, query, vars_list):
        for vars in vars_list:  # psycopg2's own executemany would not go through execute
            self.execute(query, vars)

    def defer(self, query, vars=None) -> None:
        """Keep a statement whose result nobody reads for the transaction's next round trip
        (outside a transaction there is none: then it runs now)."""
        if self.connection._begin is None:
            self.execute(query, vars)
        else:
            self.connection._deferred.append(self.mogrify(query, vars))


def defer_marked_statements(engine: Engine) -> None:
    """Make the engine's statements with the ``DEFERRABLE`` execution option wait for the next
    round trip (the engine's connections must be ``BatchingConnection``)."""

    @event.listens_for(engine, "do_execute")
    def _defer(cursor, statement, parameters, context) -> bool:
        if _can_wait(context):
            cursor.defer(statement, parameters)
            return True
        return False

    @event.listens_for(engine, "do_executemany")
    def _defer_each(cursor, statement, parameters, context) -> bool:
        if _can_wait(context):
            for each in parameters:
                cursor.defer(statement, each)
            return True
        return False


def _can_wait(context) -> bool:
    """Marked, and returning nothing that SQLAlchemy would then read from the cursor."""
    if context is None or not context.execution_options.get("deferrable"):
        return False
    return not (context.compiled is not None and context.compiled.effective_returning)
