"""One database session per request, closed when the request ends."""

from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from provisioning.db import session_factory
from provisioning.settings import Settings


def init_sessions(app: Flask, settings: Settings) -> None:
    app.extensions["provisioning_sessions"] = session_factory(settings.database_url)

    @app.teardown_appcontext
    def close_session(_error: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


def db_session() -> Session:
    if "db_session" not in g:
        g.db_session = current_app.extensions["provisioning_sessions"]()
    return g.db_session
