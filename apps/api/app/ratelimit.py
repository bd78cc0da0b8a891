"""Rate limits shared by every worker and host: flask-limiter, counting in PostgreSQL.

flask-limiter (on the `limits` library) does the limiting; its own storages are process
memory, Redis, Memcached or MongoDB. This deployment has none of those, and memory would
give every gunicorn worker its own count, so a brute-force attempt spread over the workers
would get N times the allowance. The database is already shared by every worker and host,
so `PostgresStorage` keeps the fixed-window counters in one table, with one atomic
statement per hit through the pool's helpers (nothing outlives a transaction: PgBouncer
transaction mode is fine).

What is limited: failed logins (401), per account (the email, trimmed and lower-cased)
and per client address, LOGIN_MAX_FAILURES_PER_ACCOUNT and LOGIN_MAX_FAILURES_PER_ADDRESS
in each LOGIN_FAILURE_WINDOW_SECONDS. Beyond either, POST /api/auth/login answers 429
with Retry-After, even for the right password, until the window ends. A login costs two
reads of the counters, a failed one two writes more; no other route touches them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from limits.storage import Storage

from .compat.flask_limiter import move_request_hooks
from .errors import error_response
from .models.database import DatabaseUnavailable, execute_query_one, execute_write

F = TypeVar("F", bound=Callable)

logger = logging.getLogger(__name__)

STORAGE_URI = "rentals-postgres://"
# About one hit in this many also deletes expired rows, so the table stays small.
CLEANUP_EVERY = 200

_INCR = """
INSERT INTO rate_limits AS r (key, hits, expires_at)
VALUES (%(key)s, %(amount)s, clock_timestamp() + make_interval(secs => %(expiry)s))
ON CONFLICT (key) DO UPDATE SET
    hits = CASE WHEN r.expires_at <= clock_timestamp() THEN excluded.hits ELSE r.hits + excluded.hits END,
    expires_at = CASE WHEN r.expires_at <= clock_timestamp() THEN excluded.expires_at ELSE r.expires_at END
RETURNING hits
"""


def _unavailable(exc: Exception) -> None:
    # DatabaseUnavailable's messages are ours; a psycopg2 error is named by class and code only.
    what = str(exc) if isinstance(exc, DatabaseUnavailable) else f"{type(exc).__name__} {exc.pgcode or ''}".strip()
    logger.warning("rate limit store unavailable, counting nothing: %s", what)


class PostgresStorage(Storage):
    """A `limits` storage for fixed windows, kept in the rate_limits table.

    Works in a Flask app context (every rate-limited request has one). Fails open: when
    the database cannot answer, `get` says 0 and `incr` counts nothing (one warning line
    each), so the limiter never turns a login into a 500; the login itself then answers
    503 if the database is down.
    """

    STORAGE_SCHEME = ["rentals-postgres"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        """Return the errors this storage can raise."""
        return (DatabaseUnavailable, psycopg2.Error)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add `amount` hits to `key`'s window (a new one of `expiry` s if it ran out); return the hits."""
        try:
            if random.randrange(CLEANUP_EVERY) == 0:  # noqa: S311 (spread, not secrecy)
                execute_write("DELETE FROM rate_limits WHERE expires_at < clock_timestamp()")
            row = execute_write(_INCR, {"key": key, "amount": amount, "expiry": expiry})
        except self.base_exceptions as exc:
            _unavailable(exc)
            return 0
        return row["hits"]

    def get(self, key: str) -> int:
        """Return the hits in `key`'s current window (0 when none, expired, or the database cannot say)."""
        try:
            row = execute_query_one(
                "SELECT hits FROM rate_limits WHERE key = %s AND expires_at > clock_timestamp()", (key,)
            )
        except self.base_exceptions as exc:
            _unavailable(exc)
            return 0
        return row["hits"] if row else 0

    def get_expiry(self, key: str) -> float:
        """Return when `key`'s window ends, in epoch seconds (now when there is none)."""
        row = execute_query_one(
            "SELECT extract(epoch FROM greatest(expires_at, clock_timestamp()))::float8 AS at"
            " FROM rate_limits WHERE key = %s",
            (key,),
        )
        if row:
            return row["at"]
        return execute_query_one("SELECT extract(epoch FROM clock_timestamp())::float8 AS at")["at"]

    def check(self) -> bool:
        """Return True when the table answers."""
        try:
            execute_query_one("SELECT 1 FROM rate_limits LIMIT 1")
        except self.base_exceptions:
            return False
        return True

    def reset(self) -> int | None:
        """Forget every window; return how many there were."""
        return execute_write("DELETE FROM rate_limits")

    def clear(self, key: str) -> None:
        """Forget `key`'s window."""
        execute_write("DELETE FROM rate_limits WHERE key = %s", (key,))


def client_address() -> str:
    """Return the client's address (behind TRUSTED_PROXIES proxies, as ProxyFix resolved it)."""
    return request.remote_addr or "unknown"


def login_account() -> str:
    """Return a digest of the login's email, trimmed and lower-cased: the account being tried.

    A digest keeps emails out of the table and the limiter's log lines, and bounds the key.
    Runs after the body was validated, so the email is there.
    """
    body = request.get_json(silent=True)
    if isinstance(body, str):
        # flask-openapi3 also validates a JSON object sent as a JSON string: key it the same way.
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    email = body.get("email") if isinstance(body, dict) else None
    if not isinstance(email, str):
        return "unknown"
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def _failed_login(response: Response) -> bool:
    return response.status_code == 401


def _per_account() -> str:
    s = current_app.config["SETTINGS"]
    return f"{s.login_max_failures_per_account} per {s.login_failure_window_seconds} second"


def _per_address() -> str:
    s = current_app.config["SETTINGS"]
    return f"{s.login_max_failures_per_address} per {s.login_failure_window_seconds} second"


limiter = Limiter(
    key_func=client_address,
    storage_uri=STORAGE_URI,
    strategy="fixed-window",
    # Any other storage error lets the request through rather than failing it.
    swallow_errors=True,
    # X-RateLimit-* headers would cost two queries per reply; the 429 carries Retry-After.
    headers_enabled=False,
    default_limits=[],
)


def limit_failed_logins(view: F) -> F:
    """Refuse a login with 429 once its account or its address has too many recent failures.

    Only replies with status 401 count. Both limits are checked before the view runs.
    """
    view = limiter.limit(_per_account, key_func=login_account, scope="login-account", deduct_when=_failed_login)(view)
    view = limiter.limit(_per_address, key_func=client_address, scope="login-address", deduct_when=_failed_login)(view)
    return view


def _retry_after(window_seconds: int) -> int:
    current = limiter.current_limit
    if current is None:
        return window_seconds
    try:
        ends_at = current.window.reset_time  # epoch seconds (reset_at rounds up a second more)
    except (DatabaseUnavailable, psycopg2.Error):
        return window_seconds
    return min(window_seconds, max(1, math.ceil(ends_at - time.time())))


def _too_many_requests(exc: RateLimitExceeded) -> Response:
    window = current_app.config["SETTINGS"].login_failure_window_seconds
    return error_response(
        429,
        "too_many_requests",
        "too many failed attempts; wait before trying again",
        {"limit": str(exc.limit.limit)},
        headers={"Retry-After": str(_retry_after(window))},
    )


def init_app(app: Flask, blueprint: str) -> None:
    """Attach the limiter, its hooks running only for `blueprint`'s requests; map its 429 to our shape.

    flask-limiter's request hooks would otherwise run for every request of the app (see
    compat/flask_limiter.py); only `blueprint` has limited views.
    """
    limiter.init_app(app)
    move_request_hooks(app, limiter, blueprint)
    app.register_error_handler(RateLimitExceeded, _too_many_requests)
