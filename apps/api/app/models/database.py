"""The database layer: this process's connection pool and the only ways to run SQL.

Every query goes through `execute_query`, `execute_query_one`, `execute_write` or
`transaction()`. Each borrows a connection from this process's pool and gives it back in
a `finally` block; a connection whose state is unknown after an error is discarded.

Transaction modes, chosen per helper:
- reads (`execute_query`, `execute_query_one`) run in autocommit: a lone SELECT is its own
  snapshot, so BEGIN and ROLLBACK would only add two round trips;
- `execute_write` runs one statement in autocommit, which PostgreSQL makes atomic on its own;
- `transaction()` wraps several statements in BEGIN ... COMMIT and rolls back on any error.

Inside a `transaction()` block the helpers join it: they run on its connection, each
statement behind a savepoint of its own, so a statement that fails is undone alone and
code that catches the error goes on as it would outside the block. A nested
`transaction()` is a savepoint. This is how a request's writes and what it records about
them (an idempotency key's stored reply) commit together.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg2
import psycopg2.errors
from flask import Flask, current_app
from psycopg2 import sql as pgsql

from .. import metrics, pgbouncer
from ..capacity import (
    RESERVED_CONNECTIONS_SQL,
    Budget,
    PoolerLimits,
    pooled_capacity,
    pooled_problems,
    server_capacity,
)
from ..config import ConfigError, Settings
from ..consistency import parse_lsn
from ..context import request_state
from ..forking import after_fork_in_child
from ..pool import (
    POOL_CLASSES,
    BudgetExhausted,
    ConnectionPool,
    DatabaseUnavailable,
    PoolClosed,
    PooledConnection,
    PoolTimeout,
    ServerReadOnly,
    TooManyRequests,
)
from .targets import Replicas, Target, replica_warnings

__all__ = [
    "BudgetExhausted",
    "DatabaseUnavailable",
    "PoolClosed",
    "PoolTimeout",
    "ServerReadOnly",
    "TimeoutsNotApplied",
    "TooManyRequests",
    "apply_session_timeouts",
    "capacity_info",
    "check_capacity",
    "check_session_timeouts",
    "close_pool",
    "execute_query",
    "execute_query_one",
    "execute_write",
    "fetch_all",
    "fetch_one",
    "get_pool",
    "init_app",
    "open_pool",
    "pool_stats",
    "replica_health",
    "transaction",
]

logger = logging.getLogger(__name__)

EXTENSION = "rentals_database"
APPLICATION_NAME = "rentals-api"
# A server that vanishes without closing the socket (host down, network cut) never answers,
# so statement_timeout cannot help; TCP gives up instead: an idle connection is probed after
# 30 s, and unacknowledged data fails a query after 30 s rather than the kernel's ~15 min.
TCP_SETTINGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

Params = Sequence[Any] | dict[str, Any] | None
# A WAL position no replica reaches: a request that must read from the primary.
NEWEST = 2**64 - 1
# The server settings every session must run with, by setting name -> the configured value
# in milliseconds; see session_timeouts().
SESSION_TIMEOUTS = {
    "statement_timeout": "DB_STATEMENT_TIMEOUT_MS",
    "lock_timeout": "DB_LOCK_TIMEOUT_MS",
    "idle_in_transaction_session_timeout": "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
}


class TimeoutsNotApplied(ConfigError):
    """The server's sessions do not run with the timeouts the configuration asks for."""


def session_timeouts(settings: Settings) -> dict[str, int]:
    """Return the server settings every session must have, in milliseconds, by PostgreSQL's names."""
    return {name: getattr(settings, variable.lower()) for name, variable in SESSION_TIMEOUTS.items()}


Cursor = psycopg2.extensions.cursor

# The cursor of the transaction() block running in this context (thread), if any.
_joined: ContextVar[Cursor | None] = ContextVar("rentals_transaction", default=None)


_databases: weakref.WeakSet[Database] = weakref.WeakSet()


@after_fork_in_child
def _reset_after_fork() -> None:
    for database in list(_databases):
        database._after_fork_in_child()


def _request_owner() -> object:
    # Formatted only if a leak is reported: the request (method, path, endpoint) or the thread.
    return request_state() or f"thread {threading.current_thread().name}"


class Database:
    """Owns this process's targets for one app: the primary, and the replicas of DATABASE_REPLICA_URLS.

    Each target (targets.Target) holds this process's pool to its server, made on first use
    after fork and closed on exit; `replicas` knows where each replica stands (None
    without replicas).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.budget = settings.db_request_budget_ms / 1000
        self.statement_timeout_ms = settings.db_statement_timeout_ms
        s = settings
        self.primary = Target(
            metrics.PRIMARY,
            s.database_url,
            s,
            min_size=s.db_pool_min_connections,
            max_size=s.db_pool_max_connections,
            timeout=s.db_pool_timeout,
            make_pool=self._make_pool,
            on_tick=self._host_tick,
        )
        replicas = [
            Target(
                name,
                url,
                s,
                min_size=s.db_replica_pool_min_connections,
                max_size=s.db_replica_pool_max_connections,
                timeout=s.db_replica_pool_timeout,
                make_pool=self._make_pool,
            )
            for name, url in s.replica_targets()
        ]
        self.replicas = Replicas(self.primary, replicas, s) if replicas else None
        self.capacity: dict[str, Any] | None = None
        self._pooler: metrics.PoolerPublisher | None = None
        self._probe: metrics.DatabaseProbe | None = None
        self._host_lock = threading.Lock()
        self._host_closed = False
        self.serves_requests = True
        _databases.add(self)

    def serve_no_requests(self) -> None:
        """Mark this process as one that serves no requests (a jobs scheduler): it reads from the primary only
        and leaves the host's probe and PgBouncer's figures to the web workers."""
        self.serves_requests = False
        if self.replicas is not None:
            self.replicas.close()
            self.replicas = None

    def _after_fork_in_child(self) -> None:
        self.primary.after_fork_in_child()
        # Another thread may have held the lock at the fork; the parent's probe and reader are its own.
        self._host_lock = threading.Lock()
        self._probe = self._pooler = None
        self._host_closed = False
        if self.replicas is not None:
            self.replicas.after_fork_in_child()

    def pool(self) -> ConnectionPool:
        """Return this process's pool to the primary, creating and opening it on first use in this process.

        Starts this process's replica checks too. Raises PoolClosed once close() ran in
        this process (gunicorn's worker_exit).
        """
        pool = self.primary.pool()
        replicas = self.replicas
        if replicas is not None:
            replicas.start()
        return pool

    def _make_pool(self, target: Target) -> ConnectionPool:
        s = self.settings
        connect: dict[str, Any] = {}
        if s.db_pooler == "none":
            # Sent at connect time, so every session starts with them. PgBouncer refuses (or,
            # told to ignore it, drops) this startup parameter: behind it the timeouts travel
            # on the role instead (apply_session_timeouts), and check_session_timeouts makes
            # sure they arrive.
            connect["options"] = " ".join(f"-c {name}={ms}" for name, ms in session_timeouts(s).items())
        suffix = "" if target.name == metrics.PRIMARY else f" {target.name}"
        return POOL_CLASSES[s.db_pool_mode](
            target.url,
            min_size=target.min_size,
            max_size=target.max_size,
            timeout=target.timeout,
            max_waiting=s.db_pool_max_waiting,
            max_lifetime=s.db_pool_max_lifetime,
            idle_timeout=s.db_pool_idle_timeout,
            ping_after=s.db_pool_ping_after,
            keepalive=s.db_pool_keepalive_seconds,
            leak_threshold=s.db_pool_leak_threshold,
            owner=_request_owner,
            on_tick=target.tick,
            # Only the primary must take writes; a replica is a standby by nature.
            check_server=require_writable if target.name == metrics.PRIMARY else None,
            name=f"{APPLICATION_NAME}[{os.getpid()}]{suffix}",
            connect_timeout=s.db_connect_timeout,
            application_name=APPLICATION_NAME,
            **connect,
            **TCP_SETTINGS,
        )

    def probe_targets(self) -> dict[str, str]:
        """Return the databases the host's probe asks whether they answer, by target name: URL."""
        return {metrics.PRIMARY: self.settings.database_url, **dict(self.settings.replica_targets())}

    def _host_tick(self) -> None:
        # The primary pool's maintenance thread, about once a second: the work one worker per host
        # does (the database probe, PgBouncer's figures); the other workers' ticks return at once.
        with self._host_lock:
            if self._host_closed or not self.serves_requests:
                return
            if self._probe is None:
                self._probe = metrics.DatabaseProbe(self.settings, self.probe_targets())
                if self.settings.pgbouncer_admin_url:
                    self._pooler = metrics.PoolerPublisher(self.settings)
            prober, pooler = self._probe, self._pooler
        prober.tick()
        if pooler is not None:
            pooler.tick()

    def stats(self) -> dict[str, Any]:
        """Return this process's primary pool stats (published to the metrics too), without opening a pool."""
        return self.primary.stats()

    def close(self) -> None:
        """Close this process's pools for good (inherited ones are only forgotten), replicas first."""
        if self.replicas is not None:
            self.replicas.close()
        self.primary.close()
        with self._host_lock:
            pooler, self._pooler = self._pooler, None
            prober, self._probe = self._probe, None
            self._host_closed = True
        if pooler is not None:
            pooler.close()
        if prober is not None:
            prober.close()


def init_app(app: Flask, settings: Settings) -> None:
    """Attach the database layer to the app; no connection is opened until first use."""
    app.extensions[EXTENSION] = Database(settings)


# A read for monitoring (/api/health/*, /metrics) waits at most this long for a connection:
# monitoring must answer, and quickly, while requests saturate the pool.
MONITORING_WAIT = 1.0


def monitoring_wait(settings: Settings) -> float:
    """Return how long a monitoring read waits for a pool connection: MONITORING_WAIT, or less if DB_POOL_TIMEOUT is."""
    return min(MONITORING_WAIT, settings.db_pool_timeout)


def _database(app: Flask | None = None) -> Database:
    return (app or current_app).extensions[EXTENSION]


def serve_no_requests(app: Flask) -> None:
    """Say this process serves no requests (Database.serve_no_requests); call it before the first query."""
    _database(app).serve_no_requests()


def get_pool() -> ConnectionPool:
    """Return the current app's pool for this process (created after fork, on first use)."""
    return current_app.extensions[EXTENSION].pool()


def open_pool(app: Flask) -> ConnectionPool:
    """Create this process's pool now (gunicorn's post_worker_init) instead of on the first request."""
    return _database(app).pool()


def close_pool(app: Flask) -> None:
    """Close this process's pool (gunicorn's worker_exit, tests) and flush its buffered metrics."""
    try:
        _database(app).close()
    finally:
        metrics.flush_all()


def pool_stats(app: Flask | None = None) -> dict[str, Any]:
    """Return this process's pool stats."""
    return _database(app).stats()


def replica_health(app: Flask | None = None) -> tuple[list[dict[str, Any]], list[str]] | None:
    """Return each replica's state, replay position, lag and this worker's pool to it, and the warnings.

    None without replicas.
    """
    database = _database(app)
    if database.replicas is None:
        return None
    report = database.replicas.report()
    return report, replica_warnings(report, database.settings.db_replica_max_lag_ms)


def check_capacity(app: Flask) -> dict[str, Any]:
    """Compare the connections all workers may open with what the server (and PgBouncer) allow.

    Without a pooler: hosts x workers x pool against the server's max_connections. Behind
    PgBouncer with PGBOUNCER_ADMIN_URL: that total against PgBouncer's max_client_conn, and
    PgBouncer's pools against max_connections (capacity.pooled_problems). Logs a warning per
    problem; returns the figures (also kept for /api/health/db). Raises DatabaseUnavailable
    when the server cannot be reached; an unreachable PgBouncer console is logged.
    """
    database = _database(app)
    settings = database.settings
    with app.app_context():
        row = execute_query_one(
            "SELECT current_setting('max_connections')::int AS max_connections,"
            f" {RESERVED_CONNECTIONS_SQL} AS reserved_connections"
        )
    budget = Budget.from_settings(settings)
    server_max, reserved = row["max_connections"], row["reserved_connections"]
    capacity = server_capacity(budget, server_max, reserved)
    database.capacity = capacity
    if capacity["fits"] is False:
        logger.warning("configured connections do not fit the server: %s", budget.overflow(server_max, reserved))
    if not budget.pooled:
        return capacity
    if not settings.pgbouncer_admin_url:
        logger.info(
            "behind PgBouncer: its limits are not checked; set PGBOUNCER_ADMIN_URL to its admin console to check them"
        )
        return capacity
    try:
        figures = pgbouncer.read_figures(settings)
    except pgbouncer.PoolerUnreachable as exc:
        logger.warning("could not check PgBouncer's limits: %s", exc)
        return capacity
    capacity["pooler"] = pooled_capacity(budget, PoolerLimits.from_figures(figures["limits"]), server_max, reserved)
    for problem in pooled_problems(settings, figures["limits"], server_max, reserved):
        logger.warning("behind PgBouncer: %s", problem)
    return capacity


def check_session_timeouts(app: Flask) -> dict[str, int]:
    """Read the timeouts the server really applies to this app's sessions; return them, in ms.

    Raises TimeoutsNotApplied, with a sentence naming the setting and the fix, when one is
    not what the configuration asks for (a pooler that dropped the startup options, a role
    without its settings), and DatabaseUnavailable when the server cannot be reached.
    """
    s = _database(app).settings
    wanted = session_timeouts(s)
    with app.app_context():
        rows = execute_query(
            "SELECT name, setting::bigint AS ms FROM pg_settings WHERE name = ANY(%s)", (list(wanted),)
        )
    applied = {row["name"]: row["ms"] for row in rows}
    wrong = [name for name, ms in wanted.items() if applied.get(name) != ms]
    if wrong:
        fix = (
            "behind PgBouncer (DB_POOLER=pgbouncer) they travel on the role: run `flask --app apps.api.wsgi db"
            " apply-timeouts` once, then let the pooler reconnect (RECONNECT in its admin console, or a restart)"
            if s.db_pooler == "pgbouncer"
            else "a pooler in front drops the options the app sends at connect time: set DB_POOLER=pgbouncer and"
            " run `flask --app apps.api.wsgi db apply-timeouts`"
        )
        found = ", ".join(
            f"{name} is {applied.get(name)} ms but {SESSION_TIMEOUTS[name]} asks for {wanted[name]}" for name in wrong
        )
        raise TimeoutsNotApplied(f"the server's sessions do not run with the configured timeouts ({found}); {fix}.")
    return applied


def apply_session_timeouts() -> dict[str, int]:
    """Make the configured timeouts the defaults of the app's role in its database; return them.

    ALTER ROLE CURRENT_USER IN DATABASE <this one> SET ...: a role may set its own defaults,
    and other databases the role uses keep theirs. They apply to sessions started
    afterwards. Needs an app context.
    """
    wanted = session_timeouts(current_app.config["SETTINGS"])
    with transaction() as cur:
        set_role_timeouts(cur, wanted)
    return wanted


def set_role_timeouts(cur: Cursor, timeouts: dict[str, int]) -> None:
    """Run ALTER ROLE CURRENT_USER IN DATABASE <the cursor's> SET ... for each timeout (PostgreSQL names, ms)."""
    cur.execute("SELECT current_database()")
    database = pgsql.Identifier(cur.fetchone()[0])
    for name, ms in timeouts.items():
        cur.execute(
            pgsql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET {} = {}").format(
                database, pgsql.Identifier(name), pgsql.Literal(ms)
            )
        )


def capacity_info(app: Flask | None = None) -> dict[str, Any] | None:
    """Return the last capacity figures measured by check_capacity, or None."""
    return _database(app).capacity


# -- the primary: a server that takes writes --------------------------------------------


def read_only_reason(conn: psycopg2.extensions.connection) -> str | None:
    """Return why the server behind `conn` does not take writes ("in recovery", "read-only"), or None.

    Read from what the server reports by itself (ParameterStatus, PostgreSQL 14 and later:
    `in_hot_standby` and `default_transaction_read_only`, also when they change): no round
    trip. Through PgBouncer neither is passed on; there a write's SQLSTATE 25006 tells.
    """
    if conn.closed:
        return None
    if conn.info.parameter_status("in_hot_standby") == "on":
        return "in recovery"
    if conn.info.parameter_status("default_transaction_read_only") == "on":
        return "read-only"
    return None


def require_writable(conn: PooledConnection) -> None:
    """Refuse a new connection of the primary's pool to a server that does not take writes (ServerReadOnly).

    A standby, or a primary made read-only: with several hosts in DATABASE_URL libpq's
    target_session_attrs has already skipped them; with one host this is what keeps the
    pool from serving a demoted server until it is promoted again or DATABASE_URL changes.
    """
    reason = read_only_reason(conn)
    if reason is not None:
        raise _not_writable(reason)


def _raise_if_read_only(pool: ConnectionPool, conn: PooledConnection, exc: psycopg2.Error) -> None:
    # A server that answers read-only, or from recovery, is no longer the primary (a
    # failover, or read-only by order): every connection opened to it goes at once. Only
    # for a pool that requires a writable server: on a replica's, that is its nature.
    if pool.check_server is not require_writable:
        return
    reason = "read-only" if isinstance(exc, psycopg2.errors.ReadOnlySqlTransaction) else read_only_reason(conn)
    if reason is None:
        return
    pool.retire(conn, f"the server answered {reason}")
    raise _not_writable(reason) from exc


def _not_writable(reason: str) -> ServerReadOnly:
    return ServerReadOnly(f"the database server is {reason}: it does not accept writes")


# -- helpers ------------------------------------------------------------------------


def _connection_lost(conn: PooledConnection, exc: BaseException) -> bool:
    # Server errors carry an SQLSTATE; errors from libpq itself (the socket died, the
    # server went away) do not, and leave the connection's state unknown.
    if conn.closed:
        return True
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and exc.pgcode is None


def fetch_all(cur: psycopg2.extensions.cursor) -> list[dict[str, Any]]:
    """Return the cursor's remaining rows as dicts keyed by column name."""
    if cur.description is None:
        return []
    columns = [column.name for column in cur.description]
    return [dict(zip(columns, row, strict=False)) for row in cur.fetchall()]


def fetch_one(cur: psycopg2.extensions.cursor) -> dict[str, Any] | None:
    """Return the cursor's next row as a dict, or None."""
    if cur.description is None:
        return None
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([column.name for column in cur.description], row, strict=False))


def _time_left(db: Database) -> float | None:
    """Return the seconds left of the running request's database budget, or None outside a request.

    The budget (DB_REQUEST_BUDGET_MS) starts with the request's first database call and
    covers its waits for a connection and its statements together. Raises BudgetExhausted
    once it is spent.
    """
    state = request_state()
    if state is None:
        return None
    now = time.monotonic()
    if state.db_deadline is None:
        state.db_deadline = now + db.budget
    left = state.db_deadline - now
    if left <= 0:
        raise BudgetExhausted(
            f"this request has used its {db.settings.db_request_budget_ms} ms of database time (DB_REQUEST_BUDGET_MS)"
        )
    return left


def _within_budget(db: Database, statement: Any) -> Any:
    """Return the statement, preceded by a shorter statement_timeout when the budget has less left than it."""
    left = _time_left(db)
    if left is None:
        return statement
    left_ms = max(1, int(left * 1000))
    if db.statement_timeout_ms and left_ms >= db.statement_timeout_ms:
        return statement
    # In the same round trip: a multi-statement query is one transaction, so SET LOCAL ends
    # with it (nothing reaches the session, which PgBouncer's transaction mode needs).
    prefix = f"SET LOCAL statement_timeout = {left_ms}; "
    if isinstance(statement, pgsql.Composable):
        return pgsql.SQL(prefix) + statement
    return prefix + statement


def _borrow(db: Database, pool: ConnectionPool, timeout: float | None = None) -> PooledConnection:
    left = _time_left(db)
    if left is not None:
        timeout = min(pool.timeout if timeout is None else timeout, left)
    state = request_state()
    started = time.perf_counter()
    # The request's deadline also bounds a wait the server never sees (PgBouncer's queue).
    conn = pool.getconn(timeout, deadline=state.db_deadline if state is not None else None)
    waited = time.perf_counter() - started
    metrics.POOL_WAIT_BUFFER.observe(waited)
    if state is not None:
        state.pool_wait += waited
    return conn


def _write_result(cur: Cursor) -> Any:
    return fetch_one(cur) if cur.description is not None else cur.rowcount


def _joined_statement(db: Database, cur: Cursor, sql: Any, params: Params, result: Callable[[Cursor], Any]) -> Any:
    # One statement of an open transaction, undone alone if it fails.
    cur.execute("SAVEPOINT rentals_statement")
    try:
        cur.execute(_within_budget(db, sql), params)
        value = result(cur)
    except psycopg2.Error as exc:
        if _connection_lost(cur.connection, exc):
            raise DatabaseUnavailable("the database connection was lost") from exc
        cur.execute("ROLLBACK TO SAVEPOINT rentals_statement")
        raise
    cur.execute("RELEASE SAVEPOINT rentals_statement")
    return value


# SQLSTATEs of a replica query cancelled because replay had to go on: serialization_failure
# (a snapshot, lock, buffer pin or tablespace conflict) and database_dropped. The same read
# on the primary cannot meet either.
RECOVERY_CONFLICTS = frozenset(("40001", "57P04"))
# Sentinel: the replica could not serve the read, the primary will.
_FALL_BACK = object()


def _read_after() -> int | None:
    # The WAL position a replica must have replayed to serve this request: the client's
    # token, or this request's own last commit, whichever is later.
    state = request_state()
    if state is None:
        return None
    positions = [p for p in (state.read_after, state.wrote_at) if p is not None]
    return max(positions) if positions else None


def _read(sql: str, params: Params, one: bool, timeout: float | None, replica_ok: bool = False) -> Any:
    db = _database()
    joined = _joined.get()
    if joined is not None:
        return _joined_statement(db, joined, sql, params, fetch_one if one else fetch_all)
    if replica_ok and db.replicas is not None:
        db.pool()  # the replica checks start with this process's primary pool
        target = db.replicas.choose(_read_after())
        if target is not None:
            rows = _read_on_replica(db, target, sql, params, one)
            if rows is not _FALL_BACK:
                metrics.READS.labels(target.name).inc()
                return rows
        metrics.READS.labels(metrics.PRIMARY).inc()
    return _read_on_primary(db, sql, params, one, timeout)


def _run_read(db: Database, conn: PooledConnection, sql: str, params: Params, one: bool) -> Any:
    """Run a read on `conn` within the request's budget; return one row (or None) or every row; time it."""
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(_within_budget(db, sql), params)
        rows = fetch_one(cur) if one else fetch_all(cur)
    metrics.QUERY_DURATION_BUFFER.observe(time.perf_counter() - started, "read")
    return rows


def _read_on_replica(db: Database, target: Target, sql: str, params: Params, one: bool) -> Any:
    """Run a read on a replica; return its rows, or _FALL_BACK when the primary must serve it.

    Falls back when the replica's pool has no free connection within
    DB_REPLICA_POOL_TIMEOUT, when it cannot be reached or the connection dies (the replica
    is then taken out of use until its next good check), and when the query is cancelled
    by a recovery conflict. Other errors (a bad query, a statement timeout) are the read's
    own and are raised: the primary would answer the same.
    """
    replicas = db.replicas
    try:
        pool = target.pool()
        conn = _borrow(db, pool, target.timeout)
    except BudgetExhausted:
        raise
    except (PoolTimeout, TooManyRequests):
        metrics.REPLICA_FALLBACKS.labels(target.name, "busy").inc()
        return _FALL_BACK
    except DatabaseUnavailable as exc:
        replicas.mark_down(target, str(exc))
        metrics.REPLICA_FALLBACKS.labels(target.name, "down").inc()
        return _FALL_BACK
    lost = False
    try:
        return _run_read(db, conn, sql, params, one)
    except psycopg2.Error as exc:
        lost = _connection_lost(conn, exc)
        if lost:
            replicas.mark_down(target, str(exc).strip())
            metrics.REPLICA_FALLBACKS.labels(target.name, "lost").inc()
            return _FALL_BACK
        if exc.pgcode in RECOVERY_CONFLICTS:
            logger.info("read cancelled on %s by a recovery conflict, reading from the primary", target.name)
            metrics.REPLICA_FALLBACKS.labels(target.name, "conflict").inc()
            return _FALL_BACK
        raise
    finally:
        pool.putconn(conn, discard=lost)


def _read_on_primary(db: Database, sql: str, params: Params, one: bool, timeout: float | None) -> Any:
    pool = db.pool()
    for attempt in (1, 2):
        conn = _borrow(db, pool, timeout)
        lost = False
        try:
            return _run_read(db, conn, sql, params, one)
        except psycopg2.Error as exc:
            lost = _connection_lost(conn, exc)
            if not lost:
                _raise_if_read_only(pool, conn, exc)
                raise
            if attempt == 2:
                raise DatabaseUnavailable("the database connection was lost") from exc
            # A read changes nothing, so it is safe to run again on another connection.
            logger.warning("connection lost during a read, retrying once: %s", str(exc).strip())
        finally:
            pool.putconn(conn, discard=lost)
    raise AssertionError("unreachable")


def execute_query(
    sql: str, params: Params = None, *, timeout: float | None = None, replica_ok: bool = False
) -> list[dict[str, Any]]:
    """Run one read in autocommit and return every row as a dict.

    On the primary: waits up to `timeout` seconds (default DB_POOL_TIMEOUT) for a
    connection, and is retried once on another connection if the first one turns out dead.
    `replica_ok=True` says the read may be a moment stale (a list, a single read; never
    a read that leads to a write): it then goes to a replica that has
    replayed the request's consistency token (or its own writes) and lags less than
    DB_REPLICA_MAX_LAG_MS, when there is one; the primary serves it otherwise, and when
    the replica fails it (see _read_on_replica). Raises DatabaseUnavailable (busy pool,
    unreachable server, the request's DB_REQUEST_BUDGET_MS spent) and psycopg2 errors from
    the query. Inside a transaction() block it runs in that transaction instead.
    """
    return _read(sql, params, False, timeout, replica_ok)


def execute_query_one(
    sql: str, params: Params = None, *, timeout: float | None = None, replica_ok: bool = False
) -> dict[str, Any] | None:
    """Run one read in autocommit and return its first row as a dict, or None (see execute_query)."""
    return _read(sql, params, True, timeout, replica_ok)


# After the commit, on the same connection: the primary's insert position is at or past
# the end of the commit record, whatever synchronous_commit says (pg_current_wal_lsn(),
# the written position, may still be short of it with synchronous_commit off).
_WAL_POSITION = "SELECT pg_current_wal_insert_lsn()::text"


def _note_commit(db: Database, conn: PooledConnection) -> None:
    """Record where this request's commit put the primary's WAL: the reply's consistency token.

    Read after the commit, in a round trip of its own: a position read inside the
    transaction is the WAL before its commit record, and a replica that has replayed only
    that far has not replayed the commit. Only in a request, and only with replicas (without
    them no read could be stale). A failure here does not fail the committed write: the
    reply then has no token, and the request's later reads go to the primary.
    """
    state = request_state()
    if state is None or db.replicas is None:
        return
    try:
        with conn.cursor() as cur:
            cur.execute(_WAL_POSITION)
            position = parse_lsn(cur.fetchone()[0])
    except psycopg2.Error as exc:
        logger.warning("could not read the WAL position after a commit, the reply has no token: %s", exc)
        state.read_after = NEWEST
        return
    state.wrote_at = position if state.wrote_at is None else max(state.wrote_at, position)


def execute_write(sql: str, params: Params = None) -> Any:
    """Run one write in autocommit: PostgreSQL makes a single statement atomic on its own.

    Returns the first row as a dict when the statement has RETURNING, else the row count.
    Never retried: if the connection dies mid-statement, whether it committed is unknown,
    and DatabaseUnavailable is raised. Inside a transaction() block it runs in that
    transaction instead, and commits with it.
    """
    db = _database()
    joined = _joined.get()
    if joined is not None:
        return _joined_statement(db, joined, sql, params, _write_result)
    pool = db.pool()
    conn = _borrow(db, pool)
    lost = False
    try:
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute(_within_budget(db, sql), params)
            result = _write_result(cur)
        metrics.QUERY_DURATION_BUFFER.observe(time.perf_counter() - started, "write")
        _note_commit(db, conn)
        return result
    except psycopg2.Error as exc:
        lost = _connection_lost(conn, exc)
        if lost:
            raise DatabaseUnavailable("the database connection was lost") from exc
        _raise_if_read_only(pool, conn, exc)
        raise
    finally:
        pool.putconn(conn, discard=lost)


@contextmanager
def transaction() -> Iterator[Cursor]:
    """Yield a cursor inside BEGIN ... COMMIT; roll back and re-raise on any error.

    Use fetch_all / fetch_one on the cursor for dict rows; the execute_* helpers called
    inside the block join it. Inside another block, this one is a savepoint of it. A lost
    connection raises DatabaseUnavailable; the work is then rolled back by the server (or,
    if COMMIT was already sent, its outcome is unknown).
    """
    outer = _joined.get()
    if outer is not None:
        with _savepoint(outer):
            yield outer
        return
    db = _database()
    pool = db.pool()
    conn = _borrow(db, pool)
    lost = False
    try:
        started = time.perf_counter()
        conn.autocommit = False
        with conn.cursor() as cur:
            token = _joined.set(cur)
            try:
                yield cur
            finally:
                _joined.reset(token)
        if conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INERROR:
            # COMMIT would answer with a silent ROLLBACK: the caller swallowed an error.
            raise psycopg2.errors.InFailedSqlTransaction(
                "the transaction failed inside the block (an error was caught there) and was rolled back"
            )
        conn.commit()
        metrics.QUERY_DURATION_BUFFER.observe(time.perf_counter() - started, "transaction")
        conn.autocommit = True
        _note_commit(db, conn)
    except BaseException as exc:
        lost = _connection_lost(conn, exc)
        if not lost:
            try:
                conn.rollback()
            except psycopg2.Error:
                lost = True
        if lost and isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
            raise DatabaseUnavailable("the database connection was lost") from exc
        if not lost and isinstance(exc, psycopg2.Error):
            _raise_if_read_only(pool, conn, exc)
        raise
    finally:
        pool.putconn(conn, discard=lost)


@contextmanager
def _savepoint(cur: Cursor) -> Iterator[None]:
    # A block nested in a transaction: its failure undoes only what it did.
    cur.execute("SAVEPOINT rentals_block")
    try:
        yield
    except BaseException as exc:
        if not _connection_lost(cur.connection, exc):
            cur.execute("ROLLBACK TO SAVEPOINT rentals_block")
            cur.execute("RELEASE SAVEPOINT rentals_block")
        raise
    cur.execute("RELEASE SAVEPOINT rentals_block")
