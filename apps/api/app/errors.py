"""The API's exceptions and the handlers that turn every error into one JSON shape.

Every error reply is `{"error": {"code", "message", "details"}}` with a 4xx or 503 status;
an unexpected error is a JSON 500 that names nothing internal.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg2.errors
from flask import Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException

from .pool.errors import BudgetExhausted, DatabaseUnavailable, PoolTimeout, ServerReadOnly, TooManyRequests

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error the client can act on, with its HTTP status and a stable code."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, details: Any = None, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details if details is not None else {}
        self.headers = headers or {}
        if code is not None:
            self.code = code


class ValidationError(APIError):
    """The request is malformed: wrong types, missing or unknown fields."""

    status = 400
    code = "validation_error"


class Unauthorized(APIError):
    """No valid credentials were sent."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str = "a valid bearer token is required", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="rentals-api"'})
        super().__init__(message, **kwargs)


class Forbidden(APIError):
    """The credentials are valid but do not allow this."""

    status = 403
    code = "forbidden"


class NotFound(APIError):
    """The resource does not exist."""

    status = 404
    code = "not_found"


class Conflict(APIError):
    """The request conflicts with the current state of a resource."""

    status = 409
    code = "conflict"


class TooManyAttempts(APIError):
    """Too many failed attempts in the current window; send with a Retry-After header."""

    status = 429
    code = "too_many_requests"


class Unprocessable(APIError):
    """The request is well formed but not allowed."""

    status = 422
    code = "unprocessable"


def error_document(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """Return the one error shape, `{"error": {"code", "message", "details"}}`, as a dict."""
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    """Return the one JSON error shape with its status and headers."""
    response = jsonify(error_document(code, message, details))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def retry_after_header() -> dict[str, str]:
    """Return the Retry-After header of a 503 that the database caused (DB_RETRY_AFTER seconds)."""
    return {"Retry-After": str(current_app.config["SETTINGS"].db_retry_after)}


def _database_unavailable(exc: DatabaseUnavailable) -> Response:
    if isinstance(exc, TooManyRequests):
        code = "database_busy"
    elif isinstance(exc, PoolTimeout):
        code = "database_timeout"
    elif isinstance(exc, BudgetExhausted):
        code = "database_budget_exhausted"
    elif isinstance(exc, ServerReadOnly):
        code = "database_read_only"
    else:
        code = "database_unavailable"
    logger.warning("answered 503 %s: %s", code, exc)
    return error_response(503, code, str(exc), headers=retry_after_header())


def _query_cancelled(exc: psycopg2.errors.QueryCanceled | psycopg2.errors.LockNotAvailable) -> Response:
    reason = "lock wait" if isinstance(exc, psycopg2.errors.LockNotAvailable) else "statement"
    logger.warning("answered 503 query_timeout: %s timeout (%s)", reason, exc.pgcode)
    return error_response(
        503,
        "query_timeout",
        f"the database did not finish in time ({reason} timeout)",
        headers=retry_after_header(),
    )


def _http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, "http_error")
    headers = {}
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return error_response(status, code, exc.description or exc.name, headers=headers)


def _unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return error_response(500, "internal_error", "the server failed to handle this request")


def register_error_handlers(app: Flask) -> None:
    """Make every error, expected or not, answer in the one JSON shape."""
    app.register_error_handler(
        APIError, lambda exc: error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    )
    app.register_error_handler(DatabaseUnavailable, _database_unavailable)
    app.register_error_handler(psycopg2.errors.QueryCanceled, _query_cancelled)
    app.register_error_handler(psycopg2.errors.LockNotAvailable, _query_cancelled)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected)
