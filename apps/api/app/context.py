"""Per-request state that every layer may read without importing HTTP plumbing.

The request middleware (middleware.py) starts a `RequestState` for each request; the
code it runs adds to it on the way: the database helpers their pool wait, authentication
the user id. It lives in a context variable, so code outside a request (CLI, the pool's
maintenance thread) sees None. This module imports nothing of the app.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any


class RequestState:
    """What one request has done so far: its id, where it went, its pool wait and its user."""

    __slots__ = (
        "db_deadline",
        "endpoint",
        "method",
        "path",
        "pool_wait",
        "read_after",
        "request_id",
        "token_error",
        "user_id",
        "wrote_at",
    )

    def __init__(self, environ: dict[str, Any], request_id: str) -> None:
        self.request_id = request_id
        self.method = environ.get("REQUEST_METHOD", "GET")
        # PEP 3333 hands the path over as latin-1; werkzeug's request.path decodes it as UTF-8.
        self.path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace") or "/"
        self.endpoint = "unmatched"  # until routing finds one (not on 404 and 405)
        self.pool_wait = 0.0
        self.user_id: int | None = None
        # When the request's database time (DB_REQUEST_BUDGET_MS) runs out, on the monotonic
        # clock; set by its first database call.
        self.db_deadline: float | None = None
        # WAL positions (consistency.py): the client's token, which a replica must have
        # replayed to serve this request's reads, and where this request's last commit put
        # the primary (the reply's token). token_error: why the client's token was refused.
        self.read_after: int | None = None
        self.wrote_at: int | None = None
        self.token_error: str | None = None

    def __str__(self) -> str:
        """Describe the request for a log line (a leak report names its holder)."""
        return f"{self.method} {self.path} (endpoint {self.endpoint})"


current_request: ContextVar[RequestState | None] = ContextVar("rentals_request", default=None)


def request_state() -> RequestState | None:
    """Return the running request's state, or None outside a request."""
    return current_request.get()
