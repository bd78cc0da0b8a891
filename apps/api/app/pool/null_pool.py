"""The pool that keeps nothing: every borrow opens a connection, every return closes it."""

from __future__ import annotations

from .pool import ConnectionPool, PooledConnection

CLOSED = "closed"


class NullConnectionPool(ConnectionPool):
    """A ConnectionPool that keeps no idle connection (DB_POOL_MODE=null).

    Everything else is the same: at most `max_size` connections open at once, the
    bounded wait, fail-fast reconnects, leak detection and stats; `min_size` is always 0.
    A baseline to measure the pool against: even behind PgBouncer, each borrow pays a
    connect and a login (bench/REPORT.md, "Behind PgBouncer"), so DB_POOL_MODE=pool is the
    default there too.
    """

    mode = "null"

    def __init__(self, dsn: str, **kwargs: object) -> None:
        super().__init__(dsn, **kwargs)
        self._core.minconn = 0  # psycopg2's pool closes every connection given back

    @classmethod
    def kept_min_size(cls, min_size: int) -> int:
        """Return 0: this pool keeps no connection open."""
        return 0

    def _reason_to_close(self, conn: PooledConnection, now: float) -> str | None:
        return CLOSED
