"""SQLAlchemy Core on psycopg2 with its default QueuePool and pool_pre_ping, as its docs advise.

pool_size=10 and max_overflow=0 give it the API's capacity (DB_POOL_MAX_CONNECTIONS=10).
Each request: checkout (with its pre-ping `SELECT 1`), BEGIN, the SELECT, ROLLBACK on
release: SQLAlchemy's ordinary `with engine.connect()` usage.
"""

from __future__ import annotations

import os
import threading

from sqlalchemy import Engine, create_engine, text

from .common import customer_sql, database_url, make_app

SQL = text(customer_sql(":id"))


class EnginePool:
    """One Engine (and so one QueuePool) per worker process, made after the fork."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.engine: Engine | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the engine; connections open on first checkout."""
        url = database_url().replace("postgresql://", "postgresql+psycopg2://", 1)
        with self._lock:
            if self.engine is None:
                self.engine = create_engine(url, pool_size=self.size, max_overflow=0, pool_pre_ping=True)

    def close(self) -> None:
        """Close every pooled connection."""
        if self.engine is not None:
            self.engine.dispose()

    def fetch_customer(self, customer_id: int) -> dict | None:
        """Read one customer on a connection checked out for this request."""
        with self.engine.connect() as conn:
            row = conn.execute(SQL, {"id": customer_id}).mappings().first()
            return dict(row) if row is not None else None


pool = EnginePool(int(os.environ.get("BENCH_POOL_SIZE", "10")))
app = make_app("sqlalchemy_queuepool", pool, pool.fetch_customer)
