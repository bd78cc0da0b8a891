"""The connection budget: what the configuration may open against what the server allows, and the advice.

One home for the arithmetic that three callers share: gunicorn.conf.py refuses to start
with more threads per worker than connections per pool, the database layer warns at
startup when hosts x workers x pool does not fit the server, and /api/health/db judges
the pools and recommends sizes. Nothing here does I/O; callers pass what they measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Settings
from .pool.base import (
    ACQUISITIONS,
    DISCARDED,
    IN_USE,
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
    settings: Settings, stats: dict[str, Any], server_max: int | None, reserved: int | None
) -> dict[str, Any]:
    """Return the current sizing, the pool size range that fits, and advice drawn from this worker's `stats`.

    `server_max` and `reserved` are the server's max_connections and reserved connections
    when known (None: not measured yet).
    """
    s = settings
    budget = Budget.from_settings(s)
    reserved = DEFAULT_RESERVED_CONNECTIONS if reserved is None else reserved
    # Each thread holds at most one connection, so fewer than `threads` makes requests wait;
    # more than the server's share per process cannot all be opened.
    optimal = {"low": s.gunicorn_threads, "high": s.gunicorn_threads}
    if server_max and not budget.pooled:
        optimal["high"] = budget.largest_pool(server_max - reserved)
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
            "min_connections": s.db_pool_min_connections,
            "max_connections": s.db_pool_max_connections,
            "total_max_connections": budget.total,
            "server_max_connections": server_max,
        },
        "optimal_max_connections": optimal,
        "advice": advice or ["no change needed"],
    }
