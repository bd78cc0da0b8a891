"""psycopg 3's psycopg_pool.ConnectionPool, used as its docs show: `with pool.connection()`.

min_size=2, max_size=10 like the API's defaults. The block runs the SELECT in a
transaction and commits on exit; the pool checks each returned connection's state.
"""

from __future__ import annotations

import os
import threading

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .common import customer_sql, database_url, make_app

SQL = customer_sql()


class Psycopg3Pool:
    """One psycopg_pool.ConnectionPool per worker process, made after the fork."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.max_size = max_size
        self.pool: ConnectionPool | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create and open the pool; waits until min_size connections are up."""
        with self._lock:
            if self.pool is None:
                self.pool = ConnectionPool(
                    database_url(),
                    min_size=self.min_size,
                    max_size=self.max_size,
                    kwargs={"row_factory": dict_row},
                    open=True,
                )
                self.pool.wait(timeout=30)

    def close(self) -> None:
        """Close the pool and its connections."""
        if self.pool is not None:
            self.pool.close()

    def fetch_customer(self, customer_id: int) -> dict | None:
        """Read one customer on a connection borrowed for this block."""
        with self.pool.connection() as conn:
            return conn.execute(SQL, (customer_id,)).fetchone()


pool = Psycopg3Pool(int(os.environ.get("BENCH_POOL_MIN", "2")), int(os.environ.get("BENCH_POOL_SIZE", "10")))
app = make_app("psycopg3_pool", pool, pool.fetch_customer)
