"""Failed-login limits shared by every worker and host: slots taken atomically in PostgreSQL.

A login checks its password only once it holds a slot in both limits: its client
address's (LOGIN_MAX_FAILURES_PER_ADDRESS) and its account's (LOGIN_MAX_FAILURES_PER_ACCOUNT,
the account being the email as the users table stores it), each per
LOGIN_FAILURE_WINDOW_SECONDS. Taking a slot is one statement on the rate_limits table that
counts one more unless the window already holds the limit, so however many logins arrive
at once, on whichever workers and hosts, at most the limit's worth of passwords are
checked; the others answer 429 with Retry-After (the seconds left in the window) without
touching the password. A login that does not fail with 401 gives its slots back, so only
failures use up the allowance: a slot is a failure or a login still being checked.

Each step is one statement in autocommit, so nothing outlives a transaction (PgBouncer
transaction mode is fine). A login costs two statements more than its password check, a
successful one two more again; no other route touches the table.

When the database cannot answer, taking a slot fails and the login answers 503, as it
would at its user lookup: a busy pool must not let logins past the limit. A rate_limits
table that is missing or not writable (a deploy mistake) counts nothing, with one warning
line per login, rather than locking every user out. A slot that cannot be given back
(the database went away meanwhile) counts as a failure until its window ends.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg2
import psycopg2.errors
from flask import current_app, request

from .errors import TooManyAttempts, Unauthorized
from .models import users
from .models.database import DatabaseUnavailable, execute_write

logger = logging.getLogger(__name__)

# About one slot in this many also deletes expired windows, so the table stays small.
CLEANUP_EVERY = 200
# The store is missing or not ours to write: count nothing rather than refuse every login.
_STORE_BROKEN = (psycopg2.errors.UndefinedTable, psycopg2.errors.InsufficientPrivilege)

# One atomic step: a new window, or one more hit in the current one below the limit. A
# refused reservation changes nothing and reads the seconds left in the window instead.
# Each statement runs alone in autocommit, so now() is this statement's time.
_RESERVE = """
WITH taken AS (
    INSERT INTO rate_limits AS r (key, hits, expires_at)
    VALUES (%(key)s, 1, now() + make_interval(secs => %(window)s))
    ON CONFLICT (key) DO UPDATE SET
        hits = CASE WHEN r.expires_at <= now() THEN 1 ELSE r.hits + 1 END,
        expires_at = CASE WHEN r.expires_at <= now() THEN excluded.expires_at ELSE r.expires_at END
    WHERE r.expires_at <= now() OR r.hits < %(limit)s
    RETURNING expires_at
)
SELECT expires_at, NULL::integer AS retry_after FROM taken
UNION ALL
SELECT NULL, greatest(1, ceil(extract(epoch FROM expires_at - now())))::integer
FROM rate_limits WHERE key = %(key)s AND NOT EXISTS (SELECT 1 FROM taken)
"""
# Only the window the slot was taken in: a slot of a window that has ended is gone already.
_RELEASE = "UPDATE rate_limits SET hits = hits - 1 WHERE key = %(key)s AND expires_at = %(expires_at)s AND hits > 0"
_CLEANUP = "DELETE FROM rate_limits WHERE expires_at < now()"
# The purge_rate_limits job's step: at most a batch of expired windows per statement.
_PURGE = (
    "DELETE FROM rate_limits WHERE key IN"
    " (SELECT key FROM rate_limits WHERE expires_at < now() LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
)


@dataclass(frozen=True)
class Slot:
    """One reserved hit: its key and the end of the window it was counted in."""

    key: str
    expires_at: datetime


def client_address() -> str:
    """Return the client's address (behind TRUSTED_PROXIES proxies, as ProxyFix resolved it)."""
    return request.remote_addr or "unknown"


def account_key(email: str) -> str:
    """Return the account's key: a digest of the email in the form the users table stores and looks up.

    The same normalisation as the lookup, so no spelling of an account gets a limit of its
    own. A digest keeps emails out of the table and bounds the key's length.
    """
    return "login-account:" + hashlib.sha256(users.normalize_email(email).encode()).hexdigest()[:32]


def _store_broken(exc: psycopg2.Error) -> None:
    logger.warning("rate limit store unavailable, counting nothing: %s %s", type(exc).__name__, exc.pgcode)


def _reserve(key: str, limit: int, window: int) -> Slot | None:
    """Take a slot of `key`'s limit; return it (None when the store is broken).

    Raises TooManyAttempts when the window already holds `limit`, and the database's
    errors (503) when it cannot answer.
    """
    try:
        if random.randrange(CLEANUP_EVERY) == 0:  # noqa: S311 (spread, not secrecy)
            execute_write(_CLEANUP)
        row = execute_write(_RESERVE, {"key": key, "limit": limit, "window": window})
    except _STORE_BROKEN as exc:
        _store_broken(exc)
        return None
    if row is not None and row["expires_at"] is not None:
        return Slot(key, row["expires_at"])
    # Refused; no row means the window was written after this statement's snapshot.
    retry_after = row["retry_after"] if row is not None else window
    raise TooManyAttempts(
        "too many failed attempts; wait before trying again",
        details={"limit": f"{limit} per {window} seconds"},
        headers={"Retry-After": str(min(retry_after, window))},
    )


def _release(slots: list[Slot]) -> None:
    """Give the slots back; a slot that cannot be given back stays counted until its window ends."""
    for slot in slots:
        try:
            execute_write(_RELEASE, {"key": slot.key, "expires_at": slot.expires_at})
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            what = str(exc) if isinstance(exc, DatabaseUnavailable) else f"{type(exc).__name__} {exc.pgcode}"
            logger.warning("could not give back a login slot, it counts until its window ends: %s", what)


@contextmanager
def login_attempt(email: str) -> Iterator[None]:
    """Hold a slot of the address's and the account's failed-login limits while the block checks the password.

    Raises TooManyAttempts (429, Retry-After) before the block runs when either limit is
    reached. A block that raises Unauthorized (a 401) keeps its slots: a failed login.
    Any other end of the block gives them back.
    """
    settings = current_app.config["SETTINGS"]
    window = settings.login_failure_window_seconds
    limits = (
        # The address first: a client already past its own limit never touches the account's.
        ("login-address:" + client_address(), settings.login_max_failures_per_address),
        (account_key(email), settings.login_max_failures_per_account),
    )
    slots: list[Slot] = []
    try:
        for key, limit in limits:
            slot = _reserve(key, limit, window)
            if slot is not None:
                slots.append(slot)
    except BaseException:
        _release(slots)
        raise
    try:
        yield
    except Unauthorized:
        raise
    except BaseException:
        _release(slots)
        raise
    _release(slots)


def purge_expired(batch: int) -> int:
    """Delete up to `batch` expired windows in one statement; return how many went."""
    return execute_write(_PURGE, {"batch": batch})
