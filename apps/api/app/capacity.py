"""The connection budget: what the configuration may open against what the server allows, and the advice.

One home for the arithmetic that three callers share: gunicorn.conf.py refuses to start
with more threads per worker than connections per pool, the database layer warns at
startup when hosts x workers x pool does not fit the server, and /api/health/db judges
the pools and recommends sizes. Behind PgBouncer the budget has two sides: the app's
connections are PgBouncer's clients (against its max_client_conn), and PgBouncer's own
pools are the server's clients (against max_connections). Nothing here does I/O; callers
pass what they measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import pgbouncer
from .config import Settings
from .pool.base import (
    ACQUISITIONS,
    DISCARDED,
    IN_USE,
    INTERRUPTED,
    LEAKS_DETECTED,
    MAX_CONNECTIONS,
    PEAK_IN_USE,
    REJECTED,
    TIMEOUTS,
    WAITING,
)

# PostgreSQL's default superuser_reserved_connections, assumed until the server was asked.
DEFAULT_RESERVED_CONNECTIONS = 3
# What the server keeps for superusers and reserved roles: its max_connections less this is
# what the app's role may open.
RESERVED_CONNECTIONS_SQL = (
    "current_setting('superuser_reserved_connections')::int"
    " + coalesce(current_setting('reserved_connections', true)::int, 0)"
)
# Advice on lowering the pool only after this many borrows: before, the peak says little.
ACQUISITIONS_BEFORE_SHRINK_ADVICE = 1000


@dataclass(frozen=True)
class Budget:
    """The connections a deployment may open: hosts x workers x DB_POOL_MAX_CONNECTIONS."""

    hosts: int
    workers: int
    threads: int
    pool_max: int
    # Behind a pooler the server sees the pooler's connections, not the app's: the app's
    # budget is then measured against the pooler, not against max_connections.
    pooled: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> Budget:
        """Return the budget the settings describe."""
        return cls(s.api_hosts, s.web_concurrency, s.gunicorn_threads, s.db_pool_max_connections, s.db_pooler != "none")

    @property
    def processes(self) -> int:
        """Return how many worker processes, over all hosts, each keep a pool."""
        return self.hosts * self.workers

    @property
    def total(self) -> int:
        """Return how many connections all hosts' workers may open at most."""
        return self.processes * self.pool_max

    def threads_above_pool(self) -> str | None:
        """Return the sentence naming the problem when a worker has more threads than connections, else None."""
        if self.threads <= self.pool_max:
            return None
        return f"GUNICORN_THREADS ({self.threads}) is above DB_POOL_MAX_CONNECTIONS ({self.pool_max})"

    def fits(self, usable: int) -> bool | None:
        """Return True when every pool can fill up within the server's `usable` connections; None behind a pooler."""
        if self.pooled:
            return None
        return self.total <= usable

    def largest_pool(self, usable: int) -> int:
        """Return the largest DB_POOL_MAX_CONNECTIONS that fits `usable`, never below the threads."""
        return max(self.threads, usable // self.processes)

    def overflow(self, server_max: int, reserved: int) -> str:
        """Return the sentence saying by how much the budget exceeds the server and what to change."""
        return (
            f"{self.hosts} hosts x {self.workers} workers x {self.pool_max} (DB_POOL_MAX_CONNECTIONS) = {self.total},"
            f" but the server allows {server_max - reserved} (max_connections {server_max} less {reserved} reserved);"
            " lower WEB_CONCURRENCY or DB_POOL_MAX_CONNECTIONS, or put PgBouncer in front"
        )


def server_capacity(budget: Budget, server_max: int, reserved: int) -> dict[str, Any]:
    """Return the figures of the budget against a server's max_connections less its reserved ones."""
    usable = server_max - reserved
    return {
        "server_max_connections": server_max,
        "server_reserved_connections": reserved,
        "server_usable_connections": usable,
        "configured_max_connections": budget.total,
        "fits": budget.fits(usable),
    }


@dataclass(frozen=True)
class PoolerLimits:
    """What PgBouncer lets through: client connections in all, and server connections per pool.

    A pool is one (database, user) pair; each opens up to `pool_size` server connections,
    plus `reserve_pool` when clients have waited reserve_pool_timeout; `max_db_connections`
    (0: no cap) caps each database over all its users.
    """

    max_client_conn: int
    pool_size: int
    reserve_pool: int = 0
    max_db_connections: int = 0
    pools: int = 1
    databases: int = 1

    @classmethod
    def from_figures(cls, limits: dict[str, Any]) -> PoolerLimits:
        """Return the limits in pgbouncer.read_figures()'s `limits`."""
        return cls(
            limits[pgbouncer.MAX_CLIENT_CONN],
            limits[pgbouncer.POOL_SIZE],
            limits[pgbouncer.RESERVE_POOL],
            limits[pgbouncer.MAX_DB_CONNECTIONS],
            limits[pgbouncer.POOLS],
            limits[pgbouncer.DATABASES],
        )

    @property
    def per_pool(self) -> int:
        """Return the server connections one pool may open, its reserve included."""
        return self.pool_size + self.reserve_pool

    @property
    def server_connections(self) -> int:
        """Return the server connections PgBouncer may open for the pools in use."""
        total = self.per_pool * self.pools
        if self.max_db_connections:
            total = min(total, self.max_db_connections * self.databases)
        return total

    def largest_pool_size(self, usable: int) -> int:
        """Return the largest pool_size whose pools, reserves included, fit `usable` server connections."""
        return max(1, usable // self.pools - self.reserve_pool)

    def describe_servers(self) -> str:
        """Return the server side's arithmetic in words."""
        text = (
            f"({self.pool_size} pool_size + {self.reserve_pool} reserve_pool) x {self.pools}"
            f" pool{'s' if self.pools != 1 else ''} (databases x users in use) = {self.per_pool * self.pools}"
        )
        if self.max_db_connections and self.server_connections < self.per_pool * self.pools:
            text += f", capped at {self.server_connections} by max_db_connections {self.max_db_connections}"
        return text


def _usable(server_max: int | None, reserved: int | None) -> int | None:
    # What the app's side may open on the server: max_connections less the reserved ones.
    if server_max is None:
        return None
    return server_max - (DEFAULT_RESERVED_CONNECTIONS if reserved is None else reserved)


def pooled_capacity(
    budget: Budget, limits: PoolerLimits, server_max: int | None, reserved: int | None
) -> dict[str, Any]:
    """Return both sides of the pooled budget: the app's connections against PgBouncer's max_client_conn,
    and PgBouncer's server connections against the server's max_connections less its reserved ones
    (`servers_fit` None while the server was not asked)."""
    usable = _usable(server_max, reserved)
    clients_fit = budget.total <= limits.max_client_conn
    servers_fit = None if usable is None else limits.server_connections <= usable
    return {
        "client_connections": budget.total,
        "max_client_conn": limits.max_client_conn,
        "clients_fit": clients_fit,
        "pooler_server_connections": limits.server_connections,
        "server_usable_connections": usable,
        "servers_fit": servers_fit,
        "fits": clients_fit and servers_fit is not False,
    }


def pooled_problems(
    settings: Settings, limits: dict[str, Any], server_max: int | None, reserved: int | None
) -> list[str]:
    """Return a sentence for each way the pooled shape does not fit, and for a query_wait_timeout past the budget.

    `limits` is pgbouncer.read_figures()'s; the startup check logs these, /api/health/db advises them.
    """
    budget = Budget.from_settings(settings)
    pooler = PoolerLimits.from_figures(limits)
    figures = pooled_capacity(budget, pooler, server_max, reserved)
    problems = []
    if not figures["clients_fit"]:
        problems.append(
            f"{budget.hosts} hosts x {budget.workers} workers x {budget.pool_max} (DB_POOL_MAX_CONNECTIONS) ="
            f" {budget.total} client connections, but PgBouncer's max_client_conn is {pooler.max_client_conn};"
            f" raise max_client_conn to at least {budget.total} plus PgBouncer's other clients, or lower"
            " WEB_CONCURRENCY or DB_POOL_MAX_CONNECTIONS"
        )
    if figures["servers_fit"] is False:
        reserved = DEFAULT_RESERVED_CONNECTIONS if reserved is None else reserved
        problems.append(
            f"PgBouncer may open {pooler.describe_servers()} server connections, but the server allows"
            f" {figures['server_usable_connections']} (max_connections {server_max} less {reserved} reserved);"
            f" lower default_pool_size to {pooler.largest_pool_size(figures['server_usable_connections'])}"
            " or raise max_connections"
        )
    problems.extend(_query_wait_timeout_problem(settings, limits[pgbouncer.QUERY_WAIT_TIMEOUT]))
    return problems


def _query_wait_timeout_problem(settings: Settings, wait_timeout: float) -> list[str]:
    # A request waiting at PgBouncer for a server connection runs no statement yet, so no
    # server timeout can end its wait; PgBouncer's query_wait_timeout does, by closing the
    # client connection, which a read retries once on another: twice the wait at worst.
    budget_seconds = settings.db_request_budget_ms / 1000
    if wait_timeout and 2 * wait_timeout <= budget_seconds:
        return []
    current = f"{wait_timeout:g} s" if wait_timeout else "0, no limit"
    return [
        f"PgBouncer's query_wait_timeout ({current}) lets a request wait at the pooler past DB_REQUEST_BUDGET_MS"
        f" ({settings.db_request_budget_ms} ms), and no server timeout ends that wait: set query_wait_timeout"
        f" to at most {budget_seconds / 2:g} s (a read whose connection is closed is retried once)"
    ]


def pooler_warnings(pooler: dict[str, Any] | None) -> list[str]:
    """Return what is wrong at PgBouncer now, from the health body's `pooler` (None: no pooler)."""
    if not pooler or not pooler.get("monitored"):
        return []
    if not pooler.get("reachable"):
        return [f"PgBouncer's figures are unknown: {pooler.get('error')}"]
    pool = pooler["pool"]
    if pool[pgbouncer.CL_WAITING]:
        return [
            f"{pool[pgbouncer.CL_WAITING]} clients wait at PgBouncer for a server connection to"
            f" {pooler['database']} (the longest for {pool[pgbouncer.MAXWAIT_MS]:g} ms)"
        ]
    return []


def _pooler_advice(
    settings: Settings, pooler: dict[str, Any], server_max: int | None, reserved: int | None
) -> list[str]:
    if not pooler.get("monitored"):
        return [
            "behind PgBouncer the pooler's limits (max_client_conn, default_pool_size) are unknown: set"
            " PGBOUNCER_ADMIN_URL to its admin console (postgresql://user:password@host:6432/pgbouncer, a user"
            " in its stats_users) to check them"
        ]
    if not pooler.get("reachable"):
        return [
            "PgBouncer's admin console did not answer, so its limits are unchecked: check PGBOUNCER_ADMIN_URL"
            " and that its user is in PgBouncer's stats_users"
        ]
    limits = pooler["limits"]
    advice = pooled_problems(settings, limits, server_max, reserved)
    waiting = pooler["pool"][pgbouncer.CL_WAITING]
    if waiting:
        pool = PoolerLimits.from_figures(limits)
        slow = f"PgBouncer's average transaction takes {pooler['stats']['avg_xact_time_ms']:g} ms"
        usable = _usable(server_max, reserved)
        if usable is None:
            advice.append(
                f"{waiting} clients wait at PgBouncer with the pool's {pool.pool_size} server connections busy: look"
                f" for slow queries and long transactions first ({slow}), then raise default_pool_size if the server"
                " has room"
            )
        elif pool.largest_pool_size(usable) > pool.pool_size:
            advice.append(
                f"{waiting} clients wait at PgBouncer with the pool's {pool.pool_size} server connections busy, and"
                f" the server has room: raise default_pool_size (or this database's pool_size) from"
                f" {pool.pool_size} up to {pool.largest_pool_size(usable)} ({usable} usable connections over"
                f" {pool.pools} pools, less reserve_pool), unless slow queries hold them ({slow})"
            )
        else:
            advice.append(
                f"{waiting} clients wait at PgBouncer and the server has no room for a larger pool: look for slow"
                f" queries and long transactions first ({slow}), then raise max_connections"
            )
    return advice


def pool_warnings(settings: Settings, stats: dict[str, Any], probe: dict[str, Any]) -> list[str]:
    """Return what is wrong with the pools now; `stats` sums all workers of this host."""
    warnings = []
    usage = stats[IN_USE] / stats[MAX_CONNECTIONS] if stats[MAX_CONNECTIONS] else 0
    if usage >= settings.db_pool_warn_threshold:
        warnings.append(
            f"pool usage {usage:.0%} is at or above DB_POOL_WARN_THRESHOLD ({settings.db_pool_warn_threshold:.0%})"
        )
    if stats[WAITING]:
        warnings.append(f"{stats[WAITING]} requests are waiting for a database connection")
    if probe.get("busy"):
        warnings.append("the health probe could not get a connection in time: the pool is saturated")
    elif probe.get("reachable") and probe.get("error"):
        warnings.append(f"the health probe query failed: {probe['error']}")
    return warnings


def recommendations(
    settings: Settings,
    stats: dict[str, Any],
    server_max: int | None,
    reserved: int | None,
    pooler: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the current sizing, the pool size range that fits, and advice drawn from this worker's `stats`.

    `server_max` and `reserved` are the server's max_connections and reserved connections
    when known (None: not measured yet); `pooler` is the health body's PgBouncer section
    (None without a pooler).
    """
    s = settings
    budget = Budget.from_settings(s)
    reserved = DEFAULT_RESERVED_CONNECTIONS if reserved is None else reserved
    # Each thread holds at most one connection, so fewer than `threads` makes requests wait;
    # more than the server's share per process cannot all be opened.
    optimal = {"low": s.gunicorn_threads, "high": s.gunicorn_threads}
    if server_max and not budget.pooled:
        optimal["high"] = budget.largest_pool(server_max - reserved)
    elif pooler and pooler.get("reachable"):
        # Behind PgBouncer a worker's fair share is of max_client_conn, not of the server.
        optimal["high"] = max(s.gunicorn_threads, pooler["limits"][pgbouncer.MAX_CLIENT_CONN] // budget.processes)
    advice = []
    if s.db_pool_mode == "null":
        advice.append(
            "DB_POOL_MODE=null opens a connection and logs in for every query; use pool, behind PgBouncer too"
        )
    threads_problem = budget.threads_above_pool()
    if threads_problem:
        advice.append(
            f"{threads_problem}: threads wait for connections; raise DB_POOL_MAX_CONNECTIONS to {s.gunicorn_threads}"
        )
    if server_max and budget.fits(server_max - reserved) is False:
        advice.append(budget.overflow(server_max, reserved))
    if budget.pooled and pooler is not None:
        advice.extend(_pooler_advice(s, pooler, server_max, reserved))
    timeouts = stats.get(TIMEOUTS, 0) + stats.get(REJECTED, 0)
    if timeouts:
        advice.append(
            f"{timeouts} requests found no free connection since start: look for slow queries first, "
            f"then raise DB_POOL_MAX_CONNECTIONS (up to {optimal['high']}) or add workers"
        )
    peak = stats.get(PEAK_IN_USE, 0)
    if (
        stats.get(ACQUISITIONS, 0) >= ACQUISITIONS_BEFORE_SHRINK_ADVICE
        and not timeouts
        and peak < stats[MAX_CONNECTIONS] / 2
        and stats[MAX_CONNECTIONS] > s.gunicorn_threads
    ):
        advice.append(
            f"peak use is {peak} of {stats[MAX_CONNECTIONS]} connections: DB_POOL_MAX_CONNECTIONS "
            f"could be lowered to {max(peak, s.gunicorn_threads)} to spare server connections"
        )
    if stats.get(DISCARDED):
        advice.append(f"{stats[DISCARDED]} broken connections were discarded: check the server log and network")
    if stats.get(INTERRUPTED):
        advice.append(
            f"{stats[INTERRUPTED]} connections were cut off while held past their request's DB_REQUEST_BUDGET_MS:"
            " a wait the server did not see (behind PgBouncer: clients queued for a server connection; lower"
            " query_wait_timeout or raise default_pool_size)"
        )
    if stats.get(LEAKS_DETECTED):
        advice.append(
            f"{stats[LEAKS_DETECTED]} connections were held past DB_POOL_LEAK_THRESHOLD "
            f"({s.db_pool_leak_threshold:g} s): the log names the endpoints"
        )
    return {
        "current": {
            "workers": s.web_concurrency,
            "threads": s.gunicorn_threads,
            "hosts": s.api_hosts,
            "pooler": s.db_pooler,
            "min_connections": s.db_pool_min_connections,
            "max_connections": s.db_pool_max_connections,
            "total_max_connections": budget.total,
            "server_max_connections": server_max,
        },
        "optimal_max_connections": optimal,
        "advice": advice or ["no change needed"],
    }
