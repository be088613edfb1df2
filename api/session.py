"""One database session per request, closed when the request ends; the request's token use is
recorded on the way. A database whose schema is missing or behind the code answers 503."""

import logging
import uuid

from flask import Flask, current_app, g
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.errors import http_error
from provisioning.accounts.registry import record_token_use
from provisioning.platform import migrate
from provisioning.platform.db import new_session_factory
from provisioning.platform.settings import Settings

log = logging.getLogger(__name__)

TOKEN_TO_MARK = "token_to_mark"
SCHEMA_IS_CURRENT = "provisioning_schema_is_current"
SCHEMA_BEHIND = f"the database schema is not up to date; the operator must run `{migrate.UPGRADE_COMMAND}`"


def init_sessions(app: Flask, settings: Settings) -> None:
    sessions = new_session_factory(settings.database_url)  # the token listeners are the API's alone
    app.extensions["provisioning_sessions"] = sessions
    event.listen(sessions, "before_commit", _mark_token_in_this_commit)
    event.listen(sessions, "after_commit", lambda session: session.info.pop(TOKEN_TO_MARK, None))

    @app.teardown_appcontext
    def close_session(_error: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is None:
            return
        try:
            if (token_id := session.info.pop(TOKEN_TO_MARK, None)) is not None:
                # Nothing committed (a read, a refusal): the token's use gets a transaction of its own.
                session.rollback()  # whatever the view left uncommitted is not ours to keep
                record_token_use(session, token_id)
                session.commit()
        except SQLAlchemyError:
            log.warning("could not record the token's last use; a later request will")
        finally:
            session.close()


def db_session() -> Session:
    if "db_session" not in g:
        g.db_session = current_app.extensions["provisioning_sessions"]()
    return g.db_session


def require_current_schema() -> None:
    """Answer 503 while the database's schema is missing or behind this code, before any query
    meets a table or column that is not there (an ``UndefinedTable`` 500, or on SQLite a "database
    unavailable" that is not true).

    Not migrated yet is an outage of ours that the operator ends with one command, so the log gets
    one line saying so, with no traceback. Once this process has seen the schema current it stops
    looking: migrations only move forward, and a release that brings one restarts the processes.
    A schema ahead of this code (a later release migrated first) is let through.
    """
    if current_app.extensions.get(SCHEMA_IS_CURRENT):
        return
    state = migrate.schema_state(db_session().connection())
    if state.behind:
        log.error("not serving: the %s; run `%s`", state.describe(), migrate.UPGRADE_COMMAND)
        raise http_error(503, SCHEMA_BEHIND)
    current_app.extensions[SCHEMA_IS_CURRENT] = True


def mark_token_used(token_id: uuid.UUID) -> None:
    """Record the token's use with the request's own commit if it makes one, else when it ends."""
    db_session().info[TOKEN_TO_MARK] = token_id


def _mark_token_in_this_commit(session: Session) -> None:
    """A request that writes anyway records its token's use in the same transaction: no commit of its own."""
    if (token_id := session.info.get(TOKEN_TO_MARK)) is not None:
        record_token_use(session, token_id)
