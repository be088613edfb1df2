"""One database session per request, closed when the request ends."""

import logging

from flask import Flask, current_app, g
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from provisioning.accounts import COMMIT_WHEN_DONE
from provisioning.db import session_factory
from provisioning.settings import Settings

log = logging.getLogger(__name__)


def init_sessions(app: Flask, settings: Settings) -> None:
    app.extensions["provisioning_sessions"] = session_factory(settings.database_url)

    @app.teardown_appcontext
    def close_session(error: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is None:
            return
        try:
            if error is None and session.info.pop(COMMIT_WHEN_DONE, False):
                session.commit()  # what authentication left (a token's last use), when the view did not commit
        except DBAPIError:
            log.warning("could not record the token's last use; it is recorded on a later request")
        finally:
            session.close()


def db_session() -> Session:
    if "db_session" not in g:
        g.db_session = current_app.extensions["provisioning_sessions"]()
    return g.db_session
