"""The servers a worker sends queries to: one pool per target, and what is known of each replica.

`Target` is one server (the primary, or one replica of DATABASE_REPLICA_URLS) with this
process's pool to it: made on first use after fork, closed on exit, its stats published
under its target name. The primary's and every replica's are instances of the same class
around the same pool class; only their sizes differ (DB_POOL_* and DB_REPLICA_POOL_*).

`Replicas` knows where each replica stands and picks one for a read. Knowing a replica's
replay position must not cost a round trip per request, so each worker keeps it in memory
and refreshes it in a background thread of its own, every DB_REPLICA_CHECK_INTERVAL_MS:
one `pg_current_wal_lsn()` on the primary and one `pg_last_wal_replay_lsn()` per replica,
each on a connection borrowed from that target's pool. Per worker rather than once per
host (host_singleton.py) because the figures are needed in each worker's memory on every
read: sharing them across processes would need a shared file or memory segment written
by one worker and read by all, adding its own delay, for a saving of a few tiny queries a
second per worker (4 workers and 2 replicas at 5 checks a second: 60 queries a second,
each a few microseconds of server time). A worker whose checks stall (its pools are full)
sees its own figures age and stops trusting them; a host-wide reader would hide that.

What a cached figure may be trusted for:
- a replay position only grows, so a cached one is a lower bound: a replica whose cached
  position has reached a token has surely replayed it, however old the figure;
- lag can only have grown since the check, by at most the check's age, so a read without
  a token uses a replica only while measured lag + age <= DB_REPLICA_MAX_LAG_MS.

Lag in seconds is measured without trusting the primary's activity: the thread keeps the
primary's WAL position over time; a replica's lag is how long ago the primary first showed
a position beyond the one the replica has replayed (0 when it has replayed every position
seen). Its resolution is the check interval. `pg_last_xact_replay_timestamp()` would grow
forever on an idle primary, and pg_stat_replication's replay_lag needs a map from its
rows to our URLs.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2

from .. import metrics
from ..config import Settings
from ..consistency import format_lsn, parse_lsn
from ..pool import POOL_CLASSES, ConnectionPool, DatabaseUnavailable, PoolClosed

logger = logging.getLogger(__name__)

# Replica states, as /api/health/db shows them.
UNKNOWN = "unknown"  # not checked yet
UP = "up"  # replaying and within DB_REPLICA_MAX_LAG_MS
LAGGING = "lagging"  # replaying, but further behind than DB_REPLICA_MAX_LAG_MS (or lag unknown)
DOWN = "down"  # the last check or read could not reach it
NOT_REPLICA = "not_in_recovery"  # reachable but not a standby (promoted, or a wrong URL): never used

# How much of the primary's WAL history the lag measure keeps (at the default 200 ms: 2 min).
PRIMARY_SAMPLES = 600


class Target:
    """One server and this process's pool to it: created on first use after fork, closed on exit."""

    def __init__(
        self,
        name: str,
        url: str,
        settings: Settings,
        *,
        min_size: int,
        max_size: int,
        timeout: float,
        make_pool: Callable[..., ConnectionPool],
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.settings = settings
        self.min_size, self.max_size, self.timeout = min_size, max_size, timeout
        self._make_pool = make_pool
        self._on_tick = on_tick
        self._pool: ConnectionPool | None = None
        self._publish: metrics.PoolPublisher | None = None
        self._lock = threading.Lock()
        self._closed_in_pid: int | None = None

    def after_fork_in_child(self) -> None:
        """Forget the lock another thread may have held at the fork (in the child it never returns)."""
        self._lock = threading.Lock()

    def pool(self) -> ConnectionPool:
        """Return this process's pool to the target, creating and opening it on first use in this process.

        Raises PoolClosed once close() ran in this process (gunicorn's worker_exit): a late
        caller must not open a pool that nobody would close.
        """
        pool = self._pool
        if pool is not None and not pool.closed:
            return pool
        with self._lock:
            if self._closed_in_pid == os.getpid():
                raise PoolClosed("the connection pool is closed")
            if self._pool is None or self._pool.closed:
                # None: first use here. Closed: inherited across a fork.
                self._publish = metrics.PoolPublisher(self.name)
                self._pool = self._make_pool(self)
                self._pool.open()
            return self._pool

    def tick(self, stats: dict[str, Any]) -> None:
        """Publish the pool's stats; the pool's maintenance thread calls it about once a second."""
        if self._publish is not None:
            self._publish(stats)
        if self._on_tick is not None:
            self._on_tick()

    def stats(self) -> dict[str, Any]:
        """Return this process's pool stats (published to the metrics too), without opening a pool."""
        pool = self._pool
        if pool is None or pool.closed or self._publish is None:
            s = self.settings
            return POOL_CLASSES[s.db_pool_mode].unopened_stats(self.min_size, self.max_size, s.db_pool_max_waiting)
        stats = pool.stats()
        self._publish(stats)
        return stats

    def close(self) -> None:
        """Close this process's pool for good; an inherited one is only forgotten."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._closed_in_pid = os.getpid()
        if pool is not None:
            pool.close()


@dataclass
class ReplicaView:
    """What this worker last learned of one replica."""

    target: Target
    state: str = UNKNOWN
    replay_lsn: int | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    checked_at: float | None = None  # monotonic
    error: str | None = None

    def report(self, now: float) -> dict[str, Any]:
        """Return the view as /api/health/db shows it (without the pool)."""
        return {
            "target": self.target.name,
            "state": self.state,
            "replay_lsn": None if self.replay_lsn is None else format_lsn(self.replay_lsn),
            "lag_bytes": self.lag_bytes,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "checked_ms_ago": None if self.checked_at is None else round((now - self.checked_at) * 1000),
            "error": self.error,
        }


class Replicas:
    """The replicas of one app in this process: their views, the thread that refreshes them, the choice of one.

    `choose(read_after)` never does I/O. `mark_down()` lets a read that could not reach a
    replica take it out of use at once; the next successful check puts it back. A replica
    that cannot be reached is tried again at every check, and its pool's ConnectionAttempt
    spaces the real connects out (0.1 s doubling to 1 s).
    """

    def __init__(self, primary: Target, replicas: list[Target], settings: Settings) -> None:
        self.primary = primary
        self.views = {target.name: ReplicaView(target) for target in replicas}
        self.interval = settings.db_replica_check_interval_ms / 1000
        self.max_lag = settings.db_replica_max_lag_ms / 1000
        # (monotonic time, the primary's WAL position then), oldest first.
        self._samples: deque[tuple[float, int]] = deque(maxlen=PRIMARY_SAMPLES)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None

    @property
    def targets(self) -> list[Target]:
        """Return the replicas' targets, in DATABASE_REPLICA_URLS' order."""
        return [view.target for view in self.views.values()]

    def after_fork_in_child(self) -> None:
        """Forget the parent's thread and lock; the next start() runs a thread of this process."""
        self._lock = threading.Lock()
        self._thread = None
        for view in self.views.values():
            view.target.after_fork_in_child()

    def start(self) -> None:
        """Start the refreshing thread of this process, if it does not run yet; never blocks."""
        pid = os.getpid()
        if self._thread_pid == pid or self._stop.is_set():
            return
        with self._lock:
            if self._thread_pid == pid:
                return
            self._thread_pid = pid
            self._thread = threading.Thread(target=self._run, name="replica-check", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and close the replicas' pools."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        for view in self.views.values():
            view.target.close()

    # -- the choice ----------------------------------------------------------------

    def choose(self, read_after: int | None) -> Target | None:
        """Return a replica that may serve a read now, or None (the primary serves it).

        `read_after`: a WAL position the replica must have replayed (the request's token,
        or its own last write). In any case a replica must be replaying and within
        DB_REPLICA_MAX_LAG_MS of the primary, its last check's age included.
        """
        self.start()
        now = time.monotonic()
        usable = [
            view.target
            for view in self.views.values()
            if view.state == UP
            and view.checked_at is not None
            and view.lag_seconds is not None
            and view.lag_seconds + (now - view.checked_at) <= self.max_lag
            and (read_after is None or (view.replay_lsn is not None and view.replay_lsn >= read_after))
        ]
        if not usable:
            return None
        return usable[0] if len(usable) == 1 else random.choice(usable)  # noqa: S311 (spreading load, not a secret)

    def mark_down(self, target: Target, error: str) -> None:
        """Take a replica out of use until its next successful check."""
        view = self.views[target.name]
        if view.state != DOWN:
            logger.warning("replica %s is down, reads go to the primary: %s", target.name, error)
        view.state, view.error = DOWN, error
        metrics.publish_replica(target.name, False, view.lag_seconds, view.lag_bytes)

    # -- the checks ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.check()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def check(self) -> None:
        """Read the primary's WAL position, then each replica's replay position, and update the views."""
        position = self._query(self.primary, "SELECT pg_current_wal_lsn()::text")
        if isinstance(position, tuple) and position[0] is not None:
            self._samples.append((time.monotonic(), parse_lsn(position[0])))
        for view in self.views.values():
            self._check_replica(view)

    def _query(self, target: Target, sql: str) -> tuple | str:
        # One row from the target on a pooled connection, or the error's text.
        try:
            pool = target.pool()
            conn = pool.getconn(min(self.interval * 2, target.timeout))
        except PoolClosed:
            return "the pool is closed"
        except DatabaseUnavailable as exc:
            return str(exc)
        lost = False
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchone()
        except psycopg2.Error as exc:
            lost = conn.closed or exc.pgcode is None
            return (exc.pgerror or str(exc)).strip()
        finally:
            pool.putconn(conn, discard=lost)

    def _check_replica(self, view: ReplicaView) -> None:
        target = view.target
        row = self._query(target, "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text")
        now = time.monotonic()
        if isinstance(row, str):
            if view.state != DOWN:
                logger.warning("replica %s cannot be reached, reads go to the primary: %s", target.name, row)
            view.state, view.error, view.checked_at = DOWN, row, now
            metrics.publish_replica(target.name, False, view.lag_seconds, view.lag_bytes)
            return
        in_recovery, replayed = row
        view.checked_at, view.error = now, None
        if not in_recovery or replayed is None:
            if view.state != NOT_REPLICA:
                logger.warning("server of %s is not a replica (not in recovery); it serves no reads", target.name)
            view.state, view.replay_lsn, view.lag_bytes, view.lag_seconds = NOT_REPLICA, None, None, None
            metrics.publish_replica(target.name, False, None, None)
            return
        view.replay_lsn = parse_lsn(replayed)
        view.lag_seconds, view.lag_bytes = self._lag(view.replay_lsn, now)
        state = UP if view.lag_seconds is not None and view.lag_seconds <= self.max_lag else LAGGING
        if state != view.state and view.state != UNKNOWN:
            logger.info("replica %s is %s (lag %s s)", target.name, state, view.lag_seconds)
        view.state = state
        metrics.publish_replica(target.name, True, view.lag_seconds, view.lag_bytes)

    def _lag(self, replayed: int, now: float) -> tuple[float | None, int | None]:
        # Seconds since the primary first showed a position beyond `replayed`, and bytes
        # behind its latest position; None while the primary's position is unknown.
        samples = list(self._samples)
        if not samples:
            return None, None
        behind = bisect.bisect_right(samples, replayed, key=lambda sample: sample[1])
        lag_bytes = max(0, samples[-1][1] - replayed)
        if behind == len(samples):
            return 0.0, lag_bytes
        return now - samples[behind][0], lag_bytes

    def report(self) -> list[dict[str, Any]]:
        """Return each replica's view and this worker's pool to it, for /api/health/db."""
        now = time.monotonic()
        return [{**view.report(now), "pool_stats": view.target.stats()} for view in self.views.values()]


def replica_warnings(report: list[dict[str, Any]], max_lag_ms: int) -> list[str]:
    """Return a sentence per replica that serves no reads now (down, lagging, not a replica), from report()."""
    warnings = []
    for replica in report:
        name, state = replica["target"], replica["state"]
        if state == DOWN:
            warnings.append(f"replica {name} is down, its reads go to the primary: {replica['error']}")
        elif state == LAGGING:
            lag = "unknown (the primary's WAL position could not be read)"
            if replica["lag_seconds"] is not None:
                lag = f"{replica['lag_seconds']} s ({replica['lag_bytes']} bytes)"
            warnings.append(
                f"replica {name} lags {lag}, more than DB_REPLICA_MAX_LAG_MS ({max_lag_ms} ms); its reads go to the"
                " primary"
            )
        elif state == NOT_REPLICA:
            warnings.append(f"replica {name} is not in recovery (promoted, or a wrong URL) and serves no reads")
    return warnings
