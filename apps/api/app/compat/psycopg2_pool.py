"""psycopg2's ThreadedConnectionPool, made to register connections opened outside its lock.

What psycopg2's pool does, and why we reach into it:
- `getconn()` pops the most recently returned idle connection or, when none is idle,
  calls `_connect(key)` while holding its lock; with `maxconn` connections out it raises
  `PoolError("connection pool exhausted")` at once.
- Connecting under its lock would stall every other borrow and return for the whole
  handshake (up to DB_CONNECT_TIMEOUT against a host that does not answer), so
  `CorePool._connect` refuses to connect: the caller opens the connection outside any
  lock and hands it in, and `_connect` registers it in `_used` / `_rused` (or `_pool`)
  exactly as psycopg2's own `_connect` does once it has a connection.
- `putconn()` keeps a returned connection only while fewer than `minconn` are idle and
  closes it otherwise; the pool sets `minconn` after construction to choose what it keeps.
- The idle connections are the list `_pool`, oldest first; `drop_idle` takes some out of
  it under the lock, for the pool's keepalive check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from psycopg2.pool import PoolError, ThreadedConnectionPool

from . import require

DISTRIBUTION = "psycopg2-binary"
CHECKED = ">=2.9,<2.10"

__all__ = ["CorePool", "NoIdleConnection", "PoolError", "verify"]


class NoIdleConnection(Exception):
    """psycopg2's pool had no idle connection, and we never let it open one itself."""


class CorePool(ThreadedConnectionPool):
    """psycopg2's ThreadedConnectionPool that never connects under its lock.

    `_connect` is what psycopg2's `getconn` calls, under its lock, when nothing is idle.
    Here it takes the connection the calling thread handed in, or raises NoIdleConnection.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._handoff = threading.local()
        super().__init__(*args, **kwargs)

    def _connect(self, key: object = None) -> object:
        conn = getattr(self._handoff, "conn", None)
        if conn is None:
            raise NoIdleConnection
        self._handoff.conn = None
        # What psycopg2's own _connect does once it has a connection.
        if key is not None:
            self._used[key] = conn
            self._rused[id(conn)] = key
        else:
            self._pool.append(conn)
        return conn

    def getconn_idle(self) -> object:
        """Pop an idle connection; raise NoIdleConnection when there is none."""
        return self.getconn()

    def drop_idle(self, pick: Callable[[list[object]], list[object]]) -> list[object]:
        """Remove the idle connections `pick` chooses among them (oldest first) and return them, unclosed.

        `pick` runs under the pool's lock, which every borrow and return takes: while it
        runs, no idle connection can be handed out, and it must not block. Raises PoolError
        once the pool is closed.
        """
        with self._lock:
            if self.closed:
                raise PoolError("connection pool is closed")
            picked = pick(list(self._pool))
            for conn in picked:
                self._pool.remove(conn)
        return picked

    def getconn_with(self, conn: object) -> tuple[object, object | None]:
        """Register `conn` (opened by the caller) and return it, with None.

        If a connection was returned meanwhile, psycopg2 hands out that idle one instead;
        then the result is (the idle one, `conn` unused), and the caller closes `conn`.
        """
        self._handoff.conn = conn
        try:
            got = self.getconn()
        finally:
            unused, self._handoff.conn = self._handoff.conn, None
        return got, unused


class _Stub:
    """The little of a connection that psycopg2's pool looks at: closed, its status, close()."""

    closed = 0

    class info:  # psycopg2 reads conn.info.transaction_status
        transaction_status = TRANSACTION_STATUS_IDLE

    def close(self) -> None:
        """Mark it closed."""
        self.closed = 1


def verify() -> None:
    """Raise IncompatibleVersion unless psycopg2's pool still hands connections in and out as CorePool relies on."""
    core = CorePool(0, 2)
    core.minconn = 2
    stub = _Stub()
    try:
        core.getconn_idle()
        require(False, DISTRIBUTION, "a getconn that calls _connect when nothing is idle")
    except NoIdleConnection:
        pass
    got, unused = core.getconn_with(stub)
    require(got is stub and unused is None, DISTRIBUTION, "a getconn that registers what _connect returns")
    core.putconn(stub)
    require(core.getconn_idle() is stub, DISTRIBUTION, "a putconn that keeps up to minconn idle connections")
    core.putconn(stub)
    require(core.drop_idle(lambda idle: idle) == [stub], DISTRIBUTION, "idle connections kept in a list, _pool")
    require(core.drop_idle(lambda idle: idle) == [], DISTRIBUTION, "a _pool that forgets what is taken from it")
