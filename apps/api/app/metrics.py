"""Prometheus metrics for every gunicorn worker of this host, and the pool figures of each.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it up before the workers start),
prometheus_client keeps each worker's values in files there, so any worker answers
/metrics for all of them. Without it (tests, flask run) the values are this process's.

Pool gauges come in two forms: per worker (`pid` label, gone when the worker dies) and
summed over the live workers. Counters and histograms are summed over every worker that
ever ran, as Prometheus expects of counters.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
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
)

from .compat.prometheus_client import SizedFilesCollector, add_observations, bucket_bounds, use_process_identifier
from .forking import after_fork_in_child
from .pool.base import (
    ACQUISITIONS,
    AVAILABLE,
    CONNECTION_ERRORS,
    CONNECTIONS_OPENED,
    DISCARDED,
    IN_USE,
    LEAKS_DETECTED,
    MAX_CONNECTIONS,
    RECYCLED,
    REJECTED,
    SHRUNK,
    TIMEOUTS,
    TOTAL,
    WAITING,
)

MULTIPROCESS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"

# In multiprocess mode every metric update asks for the process id to notice a fork;
# os.getpid() is a system call, several per request. The pid is cached here and
# refreshed after a fork, which is exactly when it changes.
_pid = [os.getpid()]


def _cached_pid() -> int:
    return _pid[0]


@after_fork_in_child
def _refresh_pid() -> None:
    _pid[0] = os.getpid()


if os.environ.get(MULTIPROCESS_DIR_VAR):
    use_process_identifier(_cached_pid)

# Pool stats key -> the gauges' state label.
_GAUGE_STATES = {IN_USE: "in_use", AVAILABLE: "available", TOTAL: "open", MAX_CONNECTIONS: "max"}

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
    ACQUISITIONS: Counter("rentals_db_pool_acquisitions", "Connections handed out by the pools."),
    TIMEOUTS: Counter("rentals_db_pool_timeouts", "Requests that found no free connection within DB_POOL_TIMEOUT."),
    REJECTED: Counter("rentals_db_pool_rejected", "Requests turned away because DB_POOL_MAX_WAITING already waited."),
    CONNECTIONS_OPENED: Counter("rentals_db_pool_opened_connections", "Connections opened to the server."),
    CONNECTION_ERRORS: Counter("rentals_db_pool_connection_errors", "Failed attempts to open a connection."),
    DISCARDED: Counter("rentals_db_pool_discarded_connections", "Broken connections closed by the pools."),
    RECYCLED: Counter("rentals_db_pool_recycled_connections", "Connections closed past DB_POOL_MAX_LIFETIME."),
    SHRUNK: Counter("rentals_db_pool_shrunk_connections", "Idle connections closed after DB_POOL_IDLE_TIMEOUT."),
    LEAKS_DETECTED: Counter("rentals_db_pool_leaks_detected", "Connections held past DB_POOL_LEAK_THRESHOLD."),
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


class _Buffer:
    """One histogram series' observations since its last flush."""

    __slots__ = ("bounds", "counts", "series", "total")

    def __init__(self, series: Histogram) -> None:
        self.series = series
        self.bounds = bucket_bounds(series)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0


class BufferedHistogram:
    """Counts a histogram's observations in this process; flush() adds them to prometheus_client.

    In multiprocess mode every Histogram.observe takes a lock and writes two values into
    the worker's mmap'd file (its bucket and the sum), after a labels() lookup under
    another lock, several times per request (bench/OPTIMIZATIONS.md has the figures).
    Here an observation is a bisect and two additions under one lock; flush_all() moves
    the counts into prometheus_client, from the pool's maintenance thread about once a
    second and before this process answers /metrics. Prometheus therefore sees another
    worker's last second a second late. A worker flushes when its pool closes; one that
    is killed loses up to its last second of counts.
    """

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._series: dict[tuple[str, ...], _Buffer] = {}
        _BUFFERED.append(self)

    def observe(self, value: float, *labels: str) -> None:
        """Record one observation of the series named by `labels` (none for an unlabelled histogram)."""
        buffer = self._series.get(labels)
        if buffer is None:
            buffer = self._add_series(labels)
        index = bisect_left(buffer.bounds, value)  # the first bucket whose bound is >= value
        with _BUFFER_LOCK:
            buffer.counts[index] += 1
            buffer.total += value

    def _add_series(self, labels: tuple[str, ...]) -> _Buffer:
        series = self._histogram.labels(*labels) if labels else self._histogram
        with _BUFFER_LOCK:
            return self._series.setdefault(labels, _Buffer(series))

    def flush(self) -> None:
        """Add every observation since the last flush to prometheus_client's values."""
        pending = []
        with _BUFFER_LOCK:
            for buffer in self._series.values():
                if buffer.total or any(buffer.counts):
                    pending.append((buffer.series, buffer.counts, buffer.total))
                    buffer.counts = [0] * len(buffer.bounds)
                    buffer.total = 0.0
        for series, counts, total in pending:
            add_observations(series, counts, total)


_BUFFER_LOCK = threading.Lock()
_BUFFERED: list[BufferedHistogram] = []


@after_fork_in_child
def _reset_buffers_after_fork() -> None:
    # The child starts with copies of the parent's pending counts, which the parent will
    # flush itself, and with the lock as it was at the fork (maybe held, forever).
    global _BUFFER_LOCK
    _BUFFER_LOCK = threading.Lock()
    for histogram in _BUFFERED:
        for buffer in histogram._series.values():
            buffer.counts = [0] * len(buffer.bounds)
            buffer.total = 0.0


def flush_all() -> None:
    """Move every buffered observation of this process into prometheus_client."""
    for histogram in _BUFFERED:
        histogram.flush()


POOL_WAIT_BUFFER = BufferedHistogram(POOL_WAIT)
QUERY_DURATION_BUFFER = BufferedHistogram(QUERY_DURATION)
REQUEST_DURATION_BUFFER = BufferedHistogram(REQUEST_DURATION)


def multiprocess_dir() -> str | None:
    """Return the folder the workers share their values in, or None in a single process."""
    return os.environ.get(MULTIPROCESS_DIR_VAR) or None


def _registry() -> CollectorRegistry:
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    # Skips files a booting or killed worker left unsized: /metrics and /api/health/db
    # must answer whatever state the other workers are in.
    SizedFilesCollector(registry)
    return registry


def exposition() -> tuple[bytes, str]:
    """Return the text exposition of every worker's metrics and its content type."""
    flush_all()
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


class PoolPublisher:
    """Copies one pool's stats into the gauges and counters, and flushes the buffered
    histograms; the pool's maintenance thread calls it about once a second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: dict[str, float] = {}

    def __call__(self, stats: dict[str, Any]) -> None:
        """Publish a stats snapshot of this process's pool."""
        flush_all()
        with self._lock:
            for key, state in _GAUGE_STATES.items():
                POOL_WORKER_CONNECTIONS.labels(state).set(stats[key])
                POOL_CONNECTIONS.labels(state).set(stats[key])
            POOL_WORKER_WAITING.set(stats[WAITING])
            POOL_WAITING.set(stats[WAITING])
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
                workers[int(sample.labels["pid"])][WAITING] = sample.value
    # A worker that has not published its pool yet (just booted) has only the zero that
    # prometheus_client writes at import; it is left out rather than counted as empty.
    return {pid: figures for pid, figures in workers.items() if MAX_CONNECTIONS in figures}
