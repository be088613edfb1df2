"""One database session per request, closed when the request ends; the request's token use is
committed on the way. A database whose schema is missing or behind the code answers 503."""

import logging
import uuid

from flask import Flask, Response, current_app, g
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.errors import http_error
from provisioning.accounts.registry import record_token_use
from provisioning.platform import migrate
from provisioning.platform.db import new_session_factory
from provisioning.platform.settings import Settings

log = logging.getLogger(__name__)

SCHEMA_IS_CURRENT = "provisioning_schema_is_current"
SCHEMA_BEHIND = f"the database schema is not up to date; the operator must run `{migrate.UPGRADE_COMMAND}`"


def init_sessions(app: Flask, settings: Settings) -> None:
    # The app's own factory, not the process's shared one: a test joins it to its transaction.
    app.extensions["provisioning_sessions"] = new_session_factory(settings.database_url)
    app.after_request(_keep_token_use)

    @app.teardown_appcontext
    def close_session(_error: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
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


def write_token_use(token_id: uuid.UUID) -> None:
    """Write the token's use in the request's transaction, now: a request that commits (creating
    a job) carries it in that commit, with no commit of its own; ``_keep_token_use`` sees to the
    others at the request's end."""
    record_token_use(db_session(), token_id)
    g.token_used = token_id


def _keep_token_use(response: Response) -> Response:
    """At the end of a request that wrote its token's use: a success commits what is left open
    (the use, unless the request's own commit carried it already). A refusal or a failure rolls
    back what it left uncommitted, which is not ours to keep, and writes the use again in a
    transaction of its own. (A success whose transaction was rolled back loses the use: the
    token's next request writes it.)"""
    if (token_id := g.pop("token_used", None)) is None:
        return response
    session = db_session()
    try:
        if response.status_code >= 400:
            session.rollback()
            record_token_use(session, token_id)
        session.commit()
    except SQLAlchemyError:
        log.warning("could not record the token's last use; a later request will")
    return response
