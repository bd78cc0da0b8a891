"""psycopg2's ThreadedConnectionPool configured as the seeds do: minconn=2, maxconn=10.

The plain recipe: getconn, query, putconn. psycopg2 opens a transaction for the SELECT
(BEGIN is its own round trip) and putconn rolls it back; putconn also closes any
connection returned while `minconn` are already idle, so under load most requests
reconnect. `maxconn` is the hard limit: past it getconn raises PoolError at once.
BENCH_PSYCOPG2_MINCONN / BENCH_PSYCOPG2_MAXCONN change the sizes (the fixed-size peer).
"""

from __future__ import annotations

import os
import threading

from psycopg2.extras import RealDictCursor
from psycopg2.pool import ThreadedConnectionPool

from .common import customer_sql, database_url, make_app

SQL = customer_sql()


class SeedsPool:
    """One ThreadedConnectionPool per worker process, made after the fork."""

    def __init__(self, minconn: int, maxconn: int) -> None:
        self.minconn = minconn
        self.maxconn = maxconn
        self.pool: ThreadedConnectionPool | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the pool (opens `minconn` connections)."""
        with self._lock:
            if self.pool is None:
                self.pool = ThreadedConnectionPool(self.minconn, self.maxconn, database_url())

    def close(self) -> None:
        """Close every connection."""
        if self.pool is not None:
            self.pool.closeall()

    def fetch_customer(self, customer_id: int) -> dict | None:
        """Read one customer with a connection borrowed for this request."""
        conn = self.pool.getconn()
        try:
            with conn.cursor(cursor_factory=RealDictCursor) as cur:
                cur.execute(SQL, (customer_id,))
                return cur.fetchone()
        finally:
            self.pool.putconn(conn)


pool = SeedsPool(
    int(os.environ.get("BENCH_PSYCOPG2_MINCONN", "2")), int(os.environ.get("BENCH_PSYCOPG2_MAXCONN", "10"))
)
app = make_app("psycopg2_seeds", pool, pool.fetch_customer)
