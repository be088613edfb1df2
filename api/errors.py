"""Every error answer in the DESIGN.md shape; domain errors map to HTTP statuses in one place."""

from __future__ import annotations

import logging

from flask import Flask
from flask_smorest import Api
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge, default_exceptions

from provisioning.errors import (
    AuthenticationFailed,
    BrokerUnreachable,
    Conflict,
    Forbidden,
    Gone,
    IdempotencyKeyReused,
    InvalidRequest,
    MissingCredentials,
    NotFound,
    ProvisioningError,
    Unprocessable,
)
from provisioning.platform.db import is_connection_failure
from provisioning.sites.credentials import CredentialsUnavailable

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[ProvisioningError], int] = {
    InvalidRequest: 400,
    IdempotencyKeyReused: 422,
    Unprocessable: 422,
    AuthenticationFailed: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    # The platform's key is missing or wrong, the broker down: outages of ours, not faults of the request.
    CredentialsUnavailable: 503,
    BrokerUnreachable: 503,
}

BEARER_CHALLENGE = 'Bearer realm="erpmax-provisioning"'
DATABASE_UNAVAILABLE = "the database is unavailable; try again shortly"


class ProvisioningApi(Api):
    """flask-smorest's Api, with a ``message`` in every error (Flask's own 404 and 405 included).

    flask-smorest drops the ``Allow`` header werkzeug puts on a 405; HTTP requires it there,
    and it tells a client which methods the URL does take, so it is put back.
    """

    def handle_http_exception(self, error: HTTPException):
        payload, code, headers = super().handle_http_exception(error)
        payload.setdefault("message", error.description)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            headers.setdefault("Allow", ", ".join(error.valid_methods))
        return payload, code, headers


def http_error(status: int, message: str, headers: dict[str, str] | None = None, errors: dict | None = None) -> HTTPException:
    """An HTTPException carrying what flask-smorest's handler puts in the body and headers."""
    error = default_exceptions[status]()
    error.data = {"message": message, **({"headers": headers} if headers else {}), **({"errors": errors} if errors else {})}
    return error


def error_for(error: ProvisioningError) -> HTTPException:
    # A domain error of no known kind is still answered in the error shape, as a fault of ours.
    status = next((code for kind, code in STATUS_BY_ERROR.items() if isinstance(error, kind)), 500)
    headers = errors = None
    if isinstance(error, IdempotencyKeyReused):
        # A 422 names the offending input, as the request validation errors do.
        errors = {"headers": {"Idempotency-Key": [str(error)]}}
    if isinstance(error, Unprocessable):
        errors = {"json": {error.field: [str(error)]}}
    if isinstance(error, MissingCredentials):
        # RFC 6750 3.1: a request without credentials gets the challenge, but no error code.
        headers = {"WWW-Authenticate": BEARER_CHALLENGE}
    elif isinstance(error, AuthenticationFailed):
        headers = {"WWW-Authenticate": f'{BEARER_CHALLENGE}, error="invalid_token", error_description="{error}"'}
    return http_error(status, str(error), headers, errors)


def register(app: Flask, api: ProvisioningApi) -> None:
    @app.errorhandler(ProvisioningError)
    def provisioning_error(error: ProvisioningError):
        return api.handle_http_exception(error_for(error))

    @app.errorhandler(DBAPIError)
    def database_error(error: DBAPIError):
        if is_connection_failure(error):
            # A lost or refused database connection is an outage, not a fault of the request.
            log.error("database unavailable: %s", error.orig)
            return api.handle_http_exception(http_error(503, DATABASE_UNAVAILABLE))
        log.exception("database error")
        return api.handle_http_exception(http_error(500, "internal error"))

    @app.errorhandler(RequestEntityTooLarge)
    def body_too_large(_error: RequestEntityTooLarge):
        # werkzeug's own text ("The data value transmitted exceeds the capacity limit.") names no limit.
        limit = app.config["MAX_CONTENT_LENGTH"]
        return api.handle_http_exception(
            http_error(413, f"the request body is larger than {limit} bytes, the most this API takes")
        )

    @app.errorhandler(PoolTimeout)
    def database_busy(_error: PoolTimeout):
        log.error("no database connection free within the pool timeout")
        return api.handle_http_exception(http_error(503, DATABASE_UNAVAILABLE))
