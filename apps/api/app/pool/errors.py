"""The pool's exceptions. They say what went wrong, not what a caller should answer."""

from __future__ import annotations


class DatabaseUnavailable(Exception):
    """The database cannot serve this call now; the caller may try again later."""


class PoolTimeout(DatabaseUnavailable):
    """No connection became free within the pool timeout."""


class TooManyRequests(DatabaseUnavailable):
    """Too many callers already wait for a connection; this one is turned away at once."""


class PoolClosed(DatabaseUnavailable):
    """The pool is closed: the process is shutting down."""


class BudgetExhausted(DatabaseUnavailable):
    """The caller's time for database work (waits and statements together) has run out."""


class ServerReadOnly(DatabaseUnavailable):
    """The server no longer accepts writes (made read-only, or a standby after a failover)."""
