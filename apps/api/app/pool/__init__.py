"""Connection pools on psycopg2, split the way psycopg_pool splits its own.

- `base`: what every pool shares: the stats keys, the stats of an unopened pool, the
  reconnect backoff (`ConnectionAttempt`);
- `errors`: the exceptions callers catch;
- `pool`: `ConnectionPool`, the blocking pool around psycopg2's ThreadedConnectionPool;
- `null_pool`: `NullConnectionPool`, the same pool keeping no idle connection.

Nothing here knows of Flask or HTTP.
"""

from __future__ import annotations

from . import base
from .errors import (
    BudgetExhausted,
    DatabaseUnavailable,
    PoolClosed,
    PoolTimeout,
    ServerReadOnly,
    TooManyRequests,
)
from .null_pool import NullConnectionPool
from .pool import ConnectionPool, PooledConnection

POOL_CLASSES: dict[str, type[ConnectionPool]] = {cls.mode: cls for cls in (ConnectionPool, NullConnectionPool)}

__all__ = [
    "POOL_CLASSES",
    "BudgetExhausted",
    "ConnectionPool",
    "DatabaseUnavailable",
    "NullConnectionPool",
    "PoolClosed",
    "PoolTimeout",
    "PooledConnection",
    "ServerReadOnly",
    "TooManyRequests",
    "base",
]
