"""One database session per request, closed when the request ends."""

import logging

from flask import Flask, current_app, g
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from provisioning.accounts import mark_token_used
from provisioning.db import session_factory
from provisioning.settings import Settings

log = logging.getLogger(__name__)


def init_sessions(app: Flask, settings: Settings) -> None:
    app.extensions["provisioning_sessions"] = session_factory(settings.database_url)

    @app.teardown_appcontext
    def close_session(_error: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is None:
            return
        try:
            caller = g.get("caller")
            if caller is not None and caller.token_to_mark is not None:
                session.rollback()  # whatever the view left uncommitted is not ours to keep
                mark_token_used(session, caller.token_to_mark)
        except SQLAlchemyError:
            log.warning("could not record the token's last use; a later request will")
        finally:
            session.close()


def db_session() -> Session:
    if "db_session" not in g:
        g.db_session = current_app.extensions["provisioning_sessions"]()
    return g.db_session
