"""Bearer authentication: the decorators that guard the API's views."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import current_app, request

from .errors import Unauthorized

F = TypeVar("F", bound=Callable)


def bearer_token() -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_health_token(token: str) -> bool:
    """Return True when the token is HEALTH_API_TOKEN, compared in constant time."""
    expected = current_app.config["SETTINGS"].health_api_token
    return hmac.compare_digest(token.encode(), expected.encode())


def require_health_token(view: F) -> F:
    """Let the view run only for a request bearing HEALTH_API_TOKEN; 401 otherwise.

    Needs no database, so health checks keep answering while the database is down.
    """

    @wraps(view)
    def wrapper(*args, **kwargs):
        token = bearer_token()
        if token is None:
            raise Unauthorized("send Authorization: Bearer <HEALTH_API_TOKEN>")
        if not is_health_token(token):
            raise Unauthorized("the bearer token is not valid", code="invalid_token")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
