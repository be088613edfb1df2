"""A psycopg2 connection that sends each transaction in as few round trips as it can.

psycopg2 sends BEGIN, every statement and COMMIT as round trips of their own, so a transaction of
four statements costs six; on a busy machine a round trip costs both sides about as much CPU as a
short statement. This connection keeps libpq in autocommit mode and runs the transaction itself:
BEGIN goes with the transaction's first statement, and statements whose result nobody reads
(given to ``execute_later``: events, audit entries, step writes) wait and go with the next
statement, or with COMMIT, in one query. PostgreSQL runs the same statements, in the same order,
in the same transaction; only the error of a deferred statement is raised later, by the next
round trip, where it fails the transaction as it would have anyway. Nothing is kept on the
server between transactions (no prepared statement), so a pooler such as PgBouncer in
transaction mode works as before.

SQLAlchemy needs to know nothing of it: it calls ``execute``, ``commit`` and ``rollback`` as on any
psycopg2 connection, and asking it for ``AUTOCOMMIT`` gets plain autocommit. On other databases
``execute_later`` runs the statement at once.
"""

from __future__ import annotations

import contextlib

import psycopg2
from psycopg2 import extensions
from sqlalchemy import Insert, Update
from sqlalchemy.engine import Connection

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
        self._mogrifier: extensions.cursor | None = None
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
                # A deferred statement failed: its transaction is still open, aborted. (On a broken
                # connection there is nothing to roll back, and the first error is the one to see.)
                with contextlib.suppress(psycopg2.Error):
                    self.rollback()
                raise

    def rollback(self) -> None:
        self._deferred.clear()
        if self._in_transaction():
            self._send([b"ROLLBACK"])

    def opens_a_transaction(self) -> bool:
        """Whether the next statement opens a transaction at the default isolation level, with
        nothing deferred to go before it: then nothing of that transaction has reached the server."""
        return not self._deferred and self._begin == _BEGIN[extensions.ISOLATION_LEVEL_DEFAULT] and not self._in_transaction()

    def defer(self, statement: bytes) -> None:
        """Keep a statement (SQL with its values) for the transaction's next round trip; outside a
        transaction there is none, and it runs now."""
        if self._begin is None:
            self._send([statement])
        else:
            self._deferred.append(statement)

    def mogrify(self, query: str, values: dict) -> bytes:
        """The query with its values, exactly as psycopg2 would send it."""
        if self._mogrifier is None:
            self._mogrifier = super().cursor()
        return self._mogrifier.mogrify(query, values)

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


def execute_later(connection: Connection, statement: Insert | Update, parameters: dict | list[dict]) -> None:
    """Run an INSERT or UPDATE whose result nobody reads, for each set of ``parameters``.

    On a ``BatchingConnection`` the statement is rendered to SQL here, once per row (the rows of an
    INSERT as one statement), and waits for the transaction's next round trip; it goes round
    SQLAlchemy's execution machinery, which costs more CPU than such a statement itself. Elsewhere
    it runs now. Give every column's value: defaults computed in Python are not applied.
    """
    rows = parameters if isinstance(parameters, list) else [parameters]
    dbapi_connection = connection.connection.dbapi_connection
    if not isinstance(dbapi_connection, BatchingConnection) or not rows:
        connection.execute(statement, parameters)
        return
    if not connection.in_transaction():
        connection.begin()  # SQLAlchemy must know of the transaction, to commit or roll it back
    _Rendering.of(statement, connection.dialect, tuple(rows[0])).defer(dbapi_connection, rows)


class _Rendering:
    """A statement compiled once for a dialect and set of columns: its SQL per row, and how each
    parameter becomes what psycopg2 quotes."""

    _made: dict[tuple, "_Rendering"] = {}

    @classmethod
    def of(cls, statement: Insert | Update, dialect, keys: tuple[str, ...]) -> "_Rendering":
        key = (id(statement), dialect.name, keys)
        if (made := cls._made.get(key)) is None:
            made = cls._made[key] = cls(statement, dialect, keys)
        return made

    def __init__(self, statement: Insert | Update, dialect, keys: tuple[str, ...]):
        self.statement = statement  # kept, so its id stays its own while this is cached
        self.compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        if self.compiled.effective_returning:
            raise ValueError("a statement whose result is read cannot wait")
        self.processors = {
            name: processor  # by the name a parameter has in the SQL, as construct_params gives it
            for bind, name in self.compiled.bind_names.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        # The statement's own values (its literals), for the parameters a row does not give.
        self.literals = {name: bind.effective_value for bind, name in self.compiled.bind_names.items() if not bind.required}
        sql = self.compiled.string
        head, values, row = sql.partition(" VALUES ") if statement.is_insert else ("", "", sql)
        self.head = (head + values).encode()
        self.row = row

    def defer(self, connection: BatchingConnection, rows: list[dict]) -> None:
        rendered = [connection.mogrify(self.row, self._processed(row)) for row in rows]
        connection.defer(self.head + b", ".join(rendered) if self.head else b";".join(rendered))

    def _processed(self, row: dict) -> dict:
        values = self.literals | row
        for name, processor in self.processors.items():
            if name in values:
                values[name] = processor(values[name])
        return values
