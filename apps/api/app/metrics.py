"""Prometheus metrics for every gunicorn worker of this host, and the pool figures of each.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it up before the workers start),
prometheus_client keeps each worker's values in files there, so any worker answers
/metrics for all of them. Without it (tests, flask run) the values are this process's.

Pool gauges come in two forms: per worker (`pid` label, gone when the worker dies) and
summed over the live workers. Counters and histograms are summed over every worker that
ever ran, as Prometheus expects of counters.
"""

from __future__ import annotations

import glob
import os
import threading
from collections import defaultdict
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

MULTIPROCESS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"

# In multiprocess mode every metric update asks os.getpid() (a system call) to notice a
# fork; several updates per request made that a measurable share of the request. The pid
# is cached here and refreshed by an at-fork hook, which is exactly when it changes.
_pid = [os.getpid()]


def _cached_pid() -> int:
    return _pid[0]


def _refresh_pid() -> None:
    _pid[0] = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)
if os.environ.get(MULTIPROCESS_DIR_VAR):
    values.ValueClass = values.MultiProcessValue(process_identifier=_cached_pid)

_GAUGE_STATES = {"in_use": "in_use", "available": "available", "total": "open", "max_connections": "max"}

POOL_WORKER_CONNECTIONS = Gauge(
    "rentals_db_pool_worker_connections",
    "Connections of one worker's pool by state (in_use, available, open, max).",
    ["state"],
    multiprocess_mode="liveall",
)
POOL_WORKER_WAITING = Gauge(
    "rentals_db_pool_worker_waiting_requests",
    "Requests of one worker waiting for a connection.",
    multiprocess_mode="liveall",
)
POOL_CONNECTIONS = Gauge(
    "rentals_db_pool_connections",
    "Connections of all live workers' pools by state (in_use, available, open, max).",
    ["state"],
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "rentals_db_pool_waiting_requests",
    "Requests of all live workers waiting for a connection.",
    multiprocess_mode="livesum",
)

# Pool stats key -> counter; each is published as the increase since the last publish.
POOL_COUNTERS = {
    "acquisitions": Counter("rentals_db_pool_acquisitions", "Connections handed out by the pools."),
    "timeouts": Counter("rentals_db_pool_timeouts", "Requests that found no free connection within DB_POOL_TIMEOUT."),
    "rejected": Counter("rentals_db_pool_rejected", "Requests turned away because DB_POOL_MAX_WAITING already waited."),
    "connections_opened": Counter("rentals_db_pool_opened_connections", "Connections opened to the server."),
    "connection_errors": Counter("rentals_db_pool_connection_errors", "Failed attempts to open a connection."),
    "discarded": Counter("rentals_db_pool_discarded_connections", "Broken connections closed by the pools."),
    "recycled": Counter("rentals_db_pool_recycled_connections", "Connections closed past DB_POOL_MAX_LIFETIME."),
    "shrunk": Counter("rentals_db_pool_shrunk_connections", "Idle connections closed after DB_POOL_IDLE_TIMEOUT."),
    "leaks_detected": Counter("rentals_db_pool_leaks_detected", "Connections held past DB_POOL_LEAK_THRESHOLD."),
}

_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POOL_WAIT = Histogram(
    "rentals_db_pool_wait_seconds", "Time a request waited to borrow a connection.", buckets=_FAST_BUCKETS
)
QUERY_DURATION = Histogram(
    "rentals_db_query_duration_seconds",
    "Time from sending a statement to holding its rows, by helper (read, write, transaction).",
    ["operation"],
    buckets=_FAST_BUCKETS,
)
REQUEST_DURATION = Histogram(
    "rentals_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, endpoint and status.",
    ["method", "endpoint", "status"],
    buckets=_FAST_BUCKETS,
)


def multiprocess_dir() -> str | None:
    """Return the folder the workers share their values in, or None in a single process."""
    return os.environ.get(MULTIPROCESS_DIR_VAR) or None


class _MultiProcessCollector(multiprocess.MultiProcessCollector):
    """prometheus_client's collector, skipping files a booting worker has created but not sized.

    A worker creates its file empty and sizes it a moment later; reading it in between
    raises struct.error (prometheus/client_python#1199), and a worker killed in between
    leaves it empty for good. Either way /metrics and /api/health/db must still answer.
    """

    def collect(self):
        """Merge every non-empty .db file of the shared folder."""
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(path) > 0:
                    files.append(path)
            except OSError:  # removed meanwhile (a dead worker's live gauges)
                pass
        return self.merge(files, accumulate=True)


def _registry() -> CollectorRegistry:
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    _MultiProcessCollector(registry)
    return registry


def exposition() -> tuple[bytes, str]:
    """Return the text exposition of every worker's metrics and its content type."""
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


class PoolPublisher:
    """Copies one pool's stats into the gauges and counters; safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: dict[str, float] = {}

    def __call__(self, stats: dict[str, Any]) -> None:
        """Publish a stats snapshot of this process's pool."""
        with self._lock:
            for key, state in _GAUGE_STATES.items():
                POOL_WORKER_CONNECTIONS.labels(state).set(stats[key])
                POOL_CONNECTIONS.labels(state).set(stats[key])
            POOL_WORKER_WAITING.set(stats["waiting"])
            POOL_WAITING.set(stats["waiting"])
            for key, counter in POOL_COUNTERS.items():
                increase = stats.get(key, 0) - self._published.get(key, 0)
                if increase > 0:
                    counter.inc(increase)
                    self._published[key] = stats[key]


def worker_pool_figures() -> dict[int, dict[str, float]]:
    """Return the last published pool figures of every live worker on this host, by pid.

    Empty in a single process (no shared folder): the caller uses its own pool's stats.
    """
    if multiprocess_dir() is None:
        return {}
    workers: dict[int, dict[str, float]] = defaultdict(dict)
    states = {state: key for key, state in _GAUGE_STATES.items()}
    for family in _registry().collect():
        if family.name == "rentals_db_pool_worker_connections":
            for sample in family.samples:
                workers[int(sample.labels["pid"])][states[sample.labels["state"]]] = sample.value
        elif family.name == "rentals_db_pool_worker_waiting_requests":
            for sample in family.samples:
                workers[int(sample.labels["pid"])]["waiting"] = sample.value
    # A worker that has not published its pool yet (just booted) has only the zero that
    # prometheus_client writes at import; it is left out rather than counted as empty.
    return {pid: figures for pid, figures in workers.items() if "max_connections" in figures}


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (gunicorn's child_exit)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)
