"""The blocking pool: psycopg2's ThreadedConnectionPool at the core, made to behave like the best pools.

psycopg2's pool keeps the connections and their keys (compat/psycopg2_pool.py says how we
reach into it); this class adds what it lacks: a blocking acquire with a bounded wait
queue, health checks, a lifetime, idle shrinking, leak detection, stats, fail-fast
reconnects, generations and fork safety. It knows nothing of Flask or HTTP.

Generations: every connection carries the generation it was opened in. When one fails (or
the caller finds its server no longer fit, such as a primary turned read-only), `retire`
ends that generation: idle connections of it are closed at once and borrowed ones when
they come back, so a server that went away or was demoted costs one failed request, not
one per connection. SQLAlchemy's pool invalidation after a disconnect works the same way.

A caller first takes one of `max_size` slots, waiting on our condition if needed, so
psycopg2's pool never reaches its own "connection pool exhausted". The core is created
with `minconn=0` (no I/O at construction), then `minconn` is raised to `max_size`, so it
keeps every connection returned to it; shrinking is ours, after idle_timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions

from ..compat.psycopg2_pool import CorePool, NoIdleConnection, PoolError
from ..forking import after_fork_in_child
from .base import (
    ACQUISITIONS,
    AVAILABLE,
    CONNECT_TIME_MS,
    CONNECTION_ERRORS,
    CONNECTIONS_OPENED,
    COUNTERS,
    DISCARDED,
    GENERATIONS_RETIRED,
    IN_USE,
    INTERRUPTED,
    LEAKS_DETECTED,
    MAX_CONNECTIONS,
    MAX_WAIT_MS,
    MAX_WAITING,
    MILLISECONDS,
    MIN_CONNECTIONS,
    MODE,
    PEAK_IN_USE,
    PING_FAILURES,
    PINGS,
    RECYCLED,
    REJECTED,
    RETIRED,
    SHRUNK,
    TIMEOUTS,
    TOTAL,
    WAIT_TIME_MS,
    WAITING,
    WAITS,
    ConnectionAttempt,
    empty_stats,
)
from .errors import DatabaseUnavailable, PoolClosed, PoolTimeout, TooManyRequests

logger = logging.getLogger(__name__)

_STATUS_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
_STATUS_UNKNOWN = psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN

# Fraction of max_lifetime taken off at random per connection, so that connections
# opened together (at startup, after a restart) are not all recycled at once.
LIFETIME_JITTER = 0.1
# How long past its deadline a borrower may still hold a connection before it is cut off:
# the server's own statement timeout (set to what the deadline leaves) answers first.
DEADLINE_GRACE = 0.25
# How many times the keepalive check reads an idle socket that has something to read: the
# server's goodbye is a FATAL notice, then the end of the stream.
GOODBYE_READS = 3


class PooledConnection(psycopg2.extensions.connection):
    """A psycopg2 connection carrying the pool's bookkeeping; autocommit from the start."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        now = time.monotonic()
        self.pool_created_at = now
        self.pool_last_used = now
        self.pool_checked_at = now  # the keepalive check's last look at it while idle
        self.pool_expires_at: float | None = None  # set when the pool adopts it
        self.pool_generation = 0  # set when opened by the pool
        # Reads run one statement each; a transaction is asked for explicitly.
        self.autocommit = True


@dataclass
class _Checkout:
    conn: PooledConnection
    acquired_at: float
    owner: object  # str() names the holder in a leak report
    thread: threading.Thread
    deadline: float | None = None  # monotonic; past it (and the grace), the connection is cut off
    leak_reported: bool = False
    interrupted: bool = False


_live_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


@after_fork_in_child
def _forget_pools_after_fork() -> None:
    # A forked child shares the parent's sockets. Closing or garbage-collecting those
    # connections here would send the server a Terminate on the parent's sessions, so
    # point each descriptor at /dev/null first; the parent's copies stay untouched.
    for pool in list(_live_pools):
        pool._abandon_after_fork()


def _thread_name() -> str:
    return threading.current_thread().name


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _closed_by_server(conn: PooledConnection) -> bool:
    """Return True when the server has closed this idle connection; never a round trip, never blocks.

    The server sends an idle session nothing until it ends it (shutdown, restart, a killed
    backend, idle_session_timeout): then a FATAL notice and the end of the stream, or a
    reset, or the kernel's verdict after its TCP keepalives went unanswered. So a socket
    with nothing to read is taken as open (one poll() system call), and one with something
    is read by psycopg2, which marks the connection closed on the end of the stream. Only
    for a connection nobody else can use meanwhile.
    """
    for _ in range(GOODBYE_READS):
        if conn.closed:
            return True
        if not _readable(conn.fileno()):
            return False
        try:
            conn.poll()  # reads what arrived: a notice, or the end of the stream (raises)
        except psycopg2.Error:
            return True
    return bool(conn.closed)


class ConnectionPool:
    """A fixed-capacity pool of psycopg2 connections for one process.

    `getconn()` blocks up to `timeout` seconds for a free connection; `putconn()` must
    give each one back. At most `max_size` connections are open or being opened at any
    time; at most `max_waiting` callers wait (0: none wait, a full pool fails at once).
    A maintenance thread reports leaks, drops idle connections the server closed (checked
    once `keepalive` seconds idle; 0: never), shrinks, refills to min_size and hands a
    stats snapshot to `on_tick` (metrics) about once a second. `check_server`, when given,
    sees each new connection first and refuses it by raising DatabaseUnavailable (a server
    of the wrong kind); that counts as a failed connect, with its backoff.
    """

    mode = "pool"

    @classmethod
    def kept_min_size(cls, min_size: int) -> int:
        """Return how many connections this kind of pool keeps open when asked for `min_size`."""
        return min_size

    @classmethod
    def unopened_stats(cls, min_size: int, max_size: int, max_waiting: int) -> dict[str, object]:
        """Return the stats such a pool reports before it opens: nothing held, nothing served."""
        return empty_stats(cls.mode, cls.kept_min_size(min_size), max_size, max_waiting)

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        timeout: float = 5.0,
        max_waiting: int = 64,
        max_lifetime: float = 3600.0,
        idle_timeout: float = 300.0,
        ping_after: float = 30.0,
        keepalive: float = 5.0,
        leak_threshold: float = 30.0,
        owner: Callable[[], object] = _thread_name,
        on_tick: Callable[[dict[str, object]], None] | None = None,
        check_server: Callable[[PooledConnection], None] | None = None,
        name: str = "pool",
        **connect_kwargs: object,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if not 0 <= min_size <= max_size:
            raise ValueError("min_size must be between 0 and max_size")
        if timeout <= 0:
            raise ValueError("timeout must be greater than 0")
        if max_waiting < 0:
            raise ValueError("max_waiting must be 0 or more")
        self.name = name
        self.min_size = self.kept_min_size(min_size)
        self.max_size = max_size
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.max_lifetime = max_lifetime
        self.idle_timeout = idle_timeout
        self.ping_after = ping_after
        self.keepalive = keepalive
        self.leak_threshold = leak_threshold
        self._owner = owner
        self._on_tick = on_tick
        self.check_server = check_server

        self._dsn = dsn
        self._connect_kwargs = {"connection_factory": PooledConnection, **connect_kwargs}
        self._core = CorePool(0, max_size, dsn, **self._connect_kwargs)
        self._core.minconn = max_size  # keep every connection given back; shrinking is ours

        self._cond = threading.Condition(threading.Lock())
        self._slots = 0  # connections handed out or being opened
        self._waiting = 0
        self._all: set[PooledConnection] = set()  # open connections, idle or out
        self._out: dict[int, _Checkout] = {}
        self._generation = 0  # raised by retire(); connections of older ones are closed
        self._attempt = ConnectionAttempt()
        self._idle_low_water = 0  # fewest idle connections seen since the last shrink
        self._last_shrink = time.monotonic()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._closed = False
        self._forked = False
        self._stop = threading.Event()
        self._maintainer: threading.Thread | None = None
        self.pid = os.getpid()
        self.started_at = time.time()
        _live_pools.add(self)

    # -- life ---------------------------------------------------------------------

    def open(self) -> None:
        """Open min_size connections and start the maintenance thread.

        A database that is down now is logged, not raised: the pool fills itself once
        the server answers, so a worker never needs a restart.
        """
        self._fill_to_min()
        if self._maintainer is None:
            self._maintainer = threading.Thread(target=self._maintain, name=f"{self.name}-maintenance", daemon=True)
            self._maintainer.start()
        logger.info(
            "pool %s opened in pid %s: min %s, max %s, %s open",
            self.name,
            self.pid,
            self.min_size,
            self.max_size,
            len(self._all),
        )

    def close(self) -> None:
        """Close every connection; waiters and later callers get PoolClosed."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        if self._forked:
            return
        self._core.closeall()
        with self._cond:
            self._all.clear()
        logger.info("pool %s closed in pid %s", self.name, self.pid)

    @property
    def closed(self) -> bool:
        """Return True once close() was called or the pool was inherited across a fork."""
        return self._closed or self._forked

    def _abandon_after_fork(self) -> None:
        self._forked = True
        self._stop.set()
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for conn in list(self._all):
                if not conn.closed:
                    with contextlib.suppress(OSError, psycopg2.Error):
                        os.dup2(devnull, conn.fileno())
        finally:
            os.close(devnull)

    # -- borrowing ----------------------------------------------------------------

    def getconn(self, timeout: float | None = None, *, deadline: float | None = None) -> PooledConnection:
        """Borrow a healthy connection; give it back with putconn().

        Blocks up to `timeout` seconds (default: the pool's) while all connections are
        out. Raises TooManyRequests at once when max_waiting callers already wait,
        PoolTimeout when none frees up in time, DatabaseUnavailable when no connection
        can be opened, PoolClosed after close(). With a `deadline` (time.monotonic()),
        a connection still out DEADLINE_GRACE after it is cut off by the maintenance
        thread: a call blocked on it fails as if the server had gone.
        """
        self._take_slot(self.timeout if timeout is None else timeout)
        try:
            return self._getconn_checked(deadline)
        except BaseException:
            self._give_back_slot()
            raise

    def _take_slot(self, timeout: float) -> None:
        with self._cond:
            if self._closed or self._forked:
                raise PoolClosed("the connection pool is closed")
            if self._slots >= self.max_size:
                self._wait_for_slot(timeout)
            self._slots += 1
            self._counters[ACQUISITIONS] += 1
            if self._slots > self._counters[PEAK_IN_USE]:
                self._counters[PEAK_IN_USE] = self._slots
            idle_after = len(self._all) - len(self._out) - 1
            if idle_after < self._idle_low_water:
                self._idle_low_water = max(idle_after, 0)

    def _wait_for_slot(self, timeout: float) -> None:
        # Called with the condition held and every slot taken.
        if self._waiting >= self.max_waiting:
            self._counters[REJECTED] += 1
            raise TooManyRequests(
                f"all {self.max_size} database connections are busy and {self._waiting} requests already wait"
            )
        started = time.monotonic()
        deadline = started + timeout
        self._waiting += 1
        got_slot = False
        try:
            while self._slots >= self.max_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._counters[TIMEOUTS] += 1
                    raise PoolTimeout(
                        f"no database connection became free within {timeout:g} s (all {self.max_size} busy)"
                    )
                self._cond.wait(remaining)
                if self._closed:
                    raise PoolClosed("the connection pool is closed")
            got_slot = True
        finally:
            self._waiting -= 1
            if not got_slot and self._slots < self.max_size:
                # A notify can land on a waiter whose timeout fired at the same moment;
                # pass it on so the slot does not sit free while others wait.
                self._cond.notify()
            waited_ms = (time.monotonic() - started) * 1000
            self._counters[WAITS] += 1
            self._counters[WAIT_TIME_MS] += waited_ms
            if waited_ms > self._counters[MAX_WAIT_MS]:
                self._counters[MAX_WAIT_MS] = waited_ms

    def _give_back_slot(self) -> None:
        with self._cond:
            self._slots -= 1
            self._cond.notify()

    def _getconn_checked(self, deadline: float | None) -> PooledConnection:
        # Holding a slot. Each round closes one idle connection or returns, so this ends.
        for _ in range(self.max_size + 1):
            conn = self._getconn_unchecked()
            if conn.pool_generation < self._generation:
                self._drop(conn, RETIRED)
                continue
            if conn.pool_expires_at is None:
                self._adopt(conn)
            elif time.monotonic() >= conn.pool_expires_at:
                self._drop(conn, RECYCLED)
                continue
            elif self._needs_ping(conn) and not self._ping(conn):
                self._drop(conn, DISCARDED)
                continue
            self._register(conn, deadline)
            return conn
        raise DatabaseUnavailable("no healthy database connection could be found")

    def _getconn_unchecked(self) -> PooledConnection:
        # Holding a slot: an idle connection if there is one, else a new one.
        try:
            return self._core.getconn_idle()
        except NoIdleConnection:
            pass
        except PoolError:
            raise PoolClosed("the connection pool is closed") from None
        if self._attempt.backing_off(time.monotonic()):
            raise self._attempt.refusal()
        started = time.monotonic()
        # Read before connecting: a retirement during the handshake covers this connection too.
        generation = self._generation
        try:
            conn = psycopg2.connect(self._dsn, **self._connect_kwargs)
        except psycopg2.OperationalError as exc:
            unreachable = DatabaseUnavailable("the database is unreachable")
            self._note_connect_failure(exc, unreachable)
            raise unreachable from exc
        conn.pool_generation = generation
        if self.check_server is not None:
            try:
                self.check_server(conn)
            except DatabaseUnavailable as exc:
                conn.close()
                self._note_connect_failure(exc, exc)
                raise
        elapsed_ms = (time.monotonic() - started) * 1000
        try:
            got, unused = self._core.getconn_with(conn)
        except PoolError:
            conn.close()
            raise PoolClosed("the connection pool is closed") from None
        if unused is not None:
            unused.close()
        else:
            with self._cond:
                self._counters[CONNECT_TIME_MS] += elapsed_ms
        return got

    def _note_connect_failure(self, exc: Exception, error: DatabaseUnavailable) -> None:
        # `exc` is what went wrong, for the log; `error` what callers get until the next try.
        with self._cond:
            self._counters[CONNECTION_ERRORS] += 1
            backoff = self._attempt.failed(time.monotonic(), error)
            failures = self._attempt.failures
        logger.warning(
            "pool %s cannot connect (attempt %s, next in %.1f s): %s",
            self.name,
            failures,
            backoff,
            str(exc).strip(),
        )

    def _adopt(self, conn: PooledConnection) -> None:
        jitter = 1 - random.random() * LIFETIME_JITTER  # noqa: S311 (spread, not secrecy)
        conn.pool_expires_at = conn.pool_created_at + self.max_lifetime * jitter
        with self._cond:
            self._all.add(conn)
            self._counters[CONNECTIONS_OPENED] += 1
            failures = self._attempt.succeeded()
        if failures:
            logger.info("pool %s reconnected after %s failed attempts", self.name, failures)

    def _needs_ping(self, conn: PooledConnection) -> bool:
        return time.monotonic() - conn.pool_last_used >= self.ping_after

    def _ping(self, conn: PooledConnection) -> bool:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        except psycopg2.Error as exc:
            with self._cond:
                self._counters[PINGS] += 1
                self._counters[PING_FAILURES] += 1
            logger.warning("pool %s discarded a connection that failed its ping: %s", self.name, str(exc).strip())
            return False
        with self._cond:
            self._counters[PINGS] += 1
        return True

    def _register(self, conn: PooledConnection, deadline: float | None) -> None:
        checkout = _Checkout(conn, time.monotonic(), self._owner(), threading.current_thread(), deadline)
        with self._cond:
            self._out[id(conn)] = checkout

    # -- giving back --------------------------------------------------------------

    def putconn(self, conn: PooledConnection, *, discard: bool = False) -> None:
        """Give a borrowed connection back; never raises for a broken one.

        A connection left in a transaction is rolled back. It is closed instead of kept
        when `discard` is set (its state is unknown), when it is broken, past its
        lifetime, or of a retired generation. A broken one retires its generation, unless
        the pool broke it itself (cut off past its deadline).
        """
        reason = self._return_reason(conn, discard)
        if reason == DISCARDED:
            logger.warning("pool %s discarded a broken connection", self.name)
            with self._cond:
                checkout = self._out.get(id(conn))
            if checkout is None or not checkout.interrupted:
                self.retire(conn, "a connection failed")
        try:
            self._core.putconn(conn, close=reason is not None)
        except PoolError:  # closed meanwhile, or never ours
            conn.close()
        with self._cond:
            checkout = self._out.pop(id(conn), None)
            if reason is not None:
                self._all.discard(conn)
                if reason in (DISCARDED, RECYCLED, RETIRED):
                    self._counters[reason] += 1
            self._slots -= 1
            self._cond.notify()
        if checkout is not None and checkout.leak_reported:
            logger.warning(
                "pool %s: connection held by %s came back after %.1f s",
                self.name,
                str(checkout.owner),
                time.monotonic() - checkout.acquired_at,
            )

    def _return_reason(self, conn: PooledConnection, discard: bool) -> str | None:
        if discard or conn.closed or conn.info.transaction_status == _STATUS_UNKNOWN:
            return DISCARDED
        try:
            if conn.info.transaction_status != _STATUS_IDLE:
                conn.rollback()
            if not conn.autocommit:
                conn.autocommit = True
        except psycopg2.Error:
            return DISCARDED
        return self._reason_to_close(conn, time.monotonic())

    def _reason_to_close(self, conn: PooledConnection, now: float) -> str | None:
        # A healthy connection given back: keep it until its lifetime ends or its generation is retired.
        if conn.pool_generation < self._generation:
            return RETIRED
        if now >= conn.pool_expires_at:
            return RECYCLED
        conn.pool_last_used = now
        return None

    def _drop(self, conn: PooledConnection, reason: str) -> None:
        # Close a connection we hold a slot for, keeping the slot.
        try:
            self._core.putconn(conn, close=True)
        except PoolError:
            conn.close()
        with self._cond:
            self._out.pop(id(conn), None)
            self._all.discard(conn)
            self._counters[reason] += 1
        if reason == DISCARDED:
            self.retire(conn, "a connection failed its ping")

    # -- generations --------------------------------------------------------------

    def retire(self, conn: PooledConnection, why: str) -> bool:
        """End the generation `conn` was opened in: close its idle connections now, borrowed ones on return.

        Call it when `conn` shows that its server can no longer be trusted (`why`, for the
        log): it failed, or it answered as a server the caller must not use. The next
        borrow opens a new connection (with the usual backoff when that fails). Returns
        True when this call retired the generation, False when it was over already: many
        callers failing together cost one retirement.
        """
        with self._cond:
            if conn.pool_generation < self._generation:
                return False
            self._generation += 1
            generation = self._generation
            self._counters[GENERATIONS_RETIRED] += 1
            borrowed = sum(1 for c in self._out.values() if c.conn is not conn)
        closed = 0
        while self._close_one_idle(RETIRED, older_than=generation):
            closed += 1
        logger.warning(
            "pool %s retired its connections (%s): %s idle closed now, %s in use closed when given back",
            self.name,
            why,
            closed,
            borrowed,
        )
        return True

    # -- maintenance --------------------------------------------------------------

    def _maintain(self) -> None:
        tick = max(0.05, min(1.0, self.leak_threshold / 4, self.idle_timeout / 4))
        while not self._stop.wait(tick):
            try:
                self._interrupt_overdue()
                self._report_leaks()
                self._drop_closed_idle()
                self._shrink()
                self._fill_to_min()
                if self._on_tick is not None:
                    self._on_tick(self.stats())
            except Exception:  # the thread must outlive any one bad round
                logger.exception("pool %s maintenance failed", self.name)

    def _flag_checkouts(self, due: Callable[[_Checkout], bool], flag: str, counter: str) -> list[_Checkout]:
        # The checkouts `due` picks that are not flagged yet: flag them and count them, once.
        with self._cond:
            picked = [c for c in self._out.values() if not getattr(c, flag) and due(c)]
            for checkout in picked:
                setattr(checkout, flag, True)
                self._counters[counter] += 1
        return picked

    def _interrupt_overdue(self) -> None:
        # A borrower past its deadline that still holds the connection is blocked where the
        # server's timeouts cannot reach it (queued in a pooler, a network that went quiet):
        # shutting the socket down makes its call fail now, and the connection is discarded.
        now = time.monotonic()
        overdue = self._flag_checkouts(
            lambda c: c.deadline is not None and now > c.deadline + DEADLINE_GRACE, "interrupted", INTERRUPTED
        )
        for checkout in overdue:
            logger.warning(
                "pool %s: cut off a connection held by %s %.1f s past its deadline",
                self.name,
                str(checkout.owner),
                now - checkout.deadline,
            )
            # Through a duplicate of the descriptor: shutdown acts on the socket both share.
            with (
                contextlib.suppress(OSError, psycopg2.Error),
                socket.socket(fileno=os.dup(checkout.conn.fileno())) as sock,
            ):
                sock.shutdown(socket.SHUT_RDWR)

    def _report_leaks(self) -> None:
        now = time.monotonic()
        leaks = self._flag_checkouts(
            lambda c: now - c.acquired_at >= self.leak_threshold, "leak_reported", LEAKS_DETECTED
        )
        for checkout in leaks:
            logger.warning(
                "pool %s: possible connection leak: held %.1f s by %s (thread %s)",
                self.name,
                now - checkout.acquired_at,
                str(checkout.owner),
                checkout.thread.name,
            )

    def _drop_closed_idle(self) -> None:
        # Idle connections the server closed would count as open until a borrower found them
        # dead; dropped here, the stats tell the truth with no traffic, and _fill_to_min opens
        # fresh ones as soon as the server answers, before a request needs one.
        if not self.keepalive:
            return
        now = time.monotonic()
        cutoff = now - self.keepalive

        def closed(idle: list[PooledConnection]) -> list[PooledConnection]:
            # Under the core's lock: nobody can borrow these meanwhile.
            due = [conn for conn in idle if max(conn.pool_last_used, conn.pool_checked_at) <= cutoff]
            for conn in due:
                conn.pool_checked_at = now
            return [conn for conn in due if _closed_by_server(conn)]

        try:
            dead = self._core.drop_idle(closed)
        except PoolError:  # closed meanwhile
            return
        if not dead:
            return
        for conn in dead:
            conn.close()
        with self._cond:
            self._all.difference_update(dead)
            self._counters[DISCARDED] += len(dead)
        logger.warning("pool %s dropped %s idle connections the server had closed", self.name, len(dead))
        # The server went away or restarted: the rest of that generation goes too.
        self.retire(max(dead, key=lambda conn: conn.pool_generation), "idle connections were closed by the server")

    def _shrink(self) -> None:
        # Close the idle connections that stayed unused for a whole idle_timeout.
        now = time.monotonic()
        with self._cond:
            if now - self._last_shrink < self.idle_timeout:
                return
            self._last_shrink = now
            idle = len(self._all) - len(self._out)
            surplus = min(self._idle_low_water, idle, len(self._all) - self.min_size)
            self._idle_low_water = idle - max(surplus, 0)
        for _ in range(max(surplus, 0)):
            if not self._close_one_idle(SHRUNK):
                break

    def _close_one_idle(self, counter: str, older_than: int | None = None) -> bool:
        # Close one idle connection (only of a generation before `older_than`, when given),
        # counted under `counter`; False when there is none to close.
        with self._cond:
            if self._closed or self._slots >= self.max_size or len(self._all) <= len(self._out):
                return False
            self._slots += 1
        try:
            conn = self._core.getconn_idle()
        except (NoIdleConnection, PoolError):
            self._give_back_slot()
            return False
        keep = older_than is not None and conn.pool_generation >= older_than
        try:
            self._core.putconn(conn, close=not keep)
        except PoolError:
            conn.close()
        if keep:
            self._give_back_slot()
            return False
        with self._cond:
            self._all.discard(conn)
            self._counters[counter] += 1
            self._slots -= 1
            self._cond.notify()
        return True

    def _fill_to_min(self) -> None:
        # Hold what we take until the end: psycopg2's getconn hands back an idle
        # connection before it opens a new one.
        held: list[PooledConnection] = []
        try:
            while True:
                with self._cond:
                    if (
                        self._closed
                        or self._forked
                        or len(self._all) >= self.min_size
                        or self._slots >= self.max_size
                        or self._attempt.backing_off(time.monotonic())
                    ):
                        return
                    self._slots += 1
                try:
                    conn = self._getconn_unchecked()
                except DatabaseUnavailable:
                    self._give_back_slot()
                    return
                if conn.pool_expires_at is None:
                    self._adopt(conn)
                held.append(conn)
        finally:
            for conn in held:
                self.putconn(conn)

    # -- stats --------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """Return a snapshot of sizes and counters under stable snake_case keys."""
        with self._cond:
            in_use = self._slots
            available = max(0, len(self._all) - len(self._out))
            snapshot: dict[str, object] = {
                MODE: self.mode,
                MIN_CONNECTIONS: self.min_size,
                MAX_CONNECTIONS: self.max_size,
                IN_USE: in_use,
                AVAILABLE: available,
                TOTAL: in_use + available,
                WAITING: self._waiting,
                MAX_WAITING: self.max_waiting,
            }
            snapshot.update(self._counters)
        for key in MILLISECONDS:
            snapshot[key] = round(snapshot[key], 3)
        return snapshot
