"""Prometheus metrics for every gunicorn worker of this host, and the pool figures of each.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it up before the workers start;
under granian the first worker does, apps/api/server/granian.py),
prometheus_client keeps each worker's values in files there, so any worker answers
/metrics for all of them. Without it (tests, flask run) the values are this process's.

Pool gauges come in two forms: per worker (`pid` label, gone when the worker dies) and
summed over the live workers (a dead worker's are dropped by gunicorn's child_exit, or under
granian when the metrics are read). Every pool figure has a `target` label: `primary`, or
`replica1`, `replica2`... in the order of DATABASE_REPLICA_URLS (Settings.replica_targets).
Counters and histograms are summed over every worker that ever ran, as Prometheus expects
of counters. PgBouncer's figures (PGBOUNCER_ADMIN_URL) and the database probe
(rentals_database_up, one series per target) are each the work of one worker per host
(PoolerPublisher, DatabaseProbe) and exported once, without a pid label.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import pgbouncer, probe
from .compat.prometheus_client import SizedFilesCollector, add_observations, bucket_bounds, use_process_identifier
from .config import Settings
from .forking import after_fork_in_child
from .host_singleton import HostJob
from .pool.base import (
    ACQUISITIONS,
    AVAILABLE,
    CONNECTION_ERRORS,
    CONNECTIONS_OPENED,
    DISCARDED,
    GENERATIONS_RETIRED,
    IN_USE,
    INTERRUPTED,
    LEAKS_DETECTED,
    MAX_CONNECTIONS,
    RECYCLED,
    REJECTED,
    RETIRED,
    SHRUNK,
    TIMEOUTS,
    TOTAL,
    WAITING,
)

MULTIPROCESS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"
# The target label of the primary's pool; replicas are named by Settings.replica_targets.
PRIMARY = "primary"

logger = logging.getLogger(__name__)

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
    ["target", "state"],
    multiprocess_mode="liveall",
)
POOL_WORKER_WAITING = Gauge(
    "rentals_db_pool_worker_waiting_requests",
    "Requests of one worker waiting for a connection.",
    ["target"],
    multiprocess_mode="liveall",
)
POOL_CONNECTIONS = Gauge(
    "rentals_db_pool_connections",
    "Connections of all live workers' pools by state (in_use, available, open, max).",
    ["target", "state"],
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "rentals_db_pool_waiting_requests",
    "Requests of all live workers waiting for a connection.",
    ["target"],
    multiprocess_mode="livesum",
)

# PgBouncer's figures for our pool (database, user). One worker per host writes them, and
# `livemostrecent` exports the latest value any live worker wrote, as one series without a
# pid: the writer's file goes when it dies (child_exit), and the next writer's values are
# newer. A figure that could not be read is NaN (unknown), never a stale value.
_POOLER_LABELS = ["database", "user"]
POOLER_UP = Gauge(
    "rentals_pgbouncer_up",
    "1 when this host's last read of PgBouncer's admin console succeeded, else 0.",
    _POOLER_LABELS,
    multiprocess_mode="livemostrecent",
)
POOLER_CLIENTS = Gauge(
    "rentals_pgbouncer_clients",
    "Client connections of our pool at PgBouncer by state (active, waiting for a server connection).",
    [*_POOLER_LABELS, "state"],
    multiprocess_mode="livemostrecent",
)
POOLER_SERVERS = Gauge(
    "rentals_pgbouncer_server_connections",
    "PgBouncer's server connections of our pool by state (active, idle, used, tested, login).",
    [*_POOLER_LABELS, "state"],
    multiprocess_mode="livemostrecent",
)
POOLER_MAX_WAIT = Gauge(
    "rentals_pgbouncer_max_wait_seconds",
    "How long the oldest client of our pool waiting at PgBouncer has waited.",
    _POOLER_LABELS,
    multiprocess_mode="livemostrecent",
)
POOLER_AVERAGE = Gauge(
    "rentals_pgbouncer_average_seconds",
    "PgBouncer's averages for our database over its stats_period, by what (wait, query, transaction).",
    [*_POOLER_LABELS, "what"],
    multiprocess_mode="livemostrecent",
)
POOLER_RATE = Gauge(
    "rentals_pgbouncer_per_second",
    "PgBouncer's average rate for our database over its stats_period, by what (transactions, queries).",
    [*_POOLER_LABELS, "what"],
    multiprocess_mode="livemostrecent",
)
POOLER_LIMIT = Gauge(
    "rentals_pgbouncer_limit",
    "PgBouncer's limits around our pool (pool_size, reserve_pool, max_client_conn, max_db_connections).",
    [*_POOLER_LABELS, "setting"],
    multiprocess_mode="livemostrecent",
)
_POOLER_CLIENT_STATES = {pgbouncer.CL_ACTIVE: "active", pgbouncer.CL_WAITING: "waiting"}
_POOLER_SERVER_STATES = {f"sv_{state}": state for state in ("active", "idle", "used", "tested", "login")}
_POOLER_AVERAGES = {"avg_wait_time_ms": "wait", "avg_query_time_ms": "query", "avg_xact_time_ms": "transaction"}
_POOLER_RATES = {"avg_xact_count": "transactions", "avg_query_count": "queries"}
_POOLER_LIMITS = (pgbouncer.POOL_SIZE, pgbouncer.RESERVE_POOL, pgbouncer.MAX_CLIENT_CONN, pgbouncer.MAX_DB_CONNECTIONS)

# Whether each database target answers, from one probe per host every DB_PROBE_INTERVAL_SECONDS
# (DatabaseProbe; `pgbouncer` from PoolerPublisher's read of its console). `livemostrecent`,
# like the PgBouncer gauges: one series per host and target, the prober's latest value; the
# values leave with a dead prober's file (child_exit), and its successor's are newer.
PGBOUNCER = "pgbouncer"
DATABASE_UP = Gauge(
    "rentals_database_up",
    "1 when this host's last probe of the target answered, else 0.",
    ["target"],
    multiprocess_mode="livemostrecent",
)
DATABASE_PROBE_SECONDS = Gauge(
    "rentals_database_probe_seconds",
    "How long this host's last probe of the target took, answered or not.",
    ["target"],
    multiprocess_mode="livemostrecent",
)

# The outbox's backlog (models/outbox.py), read from the database by whichever worker
# answers a scrape; NaN when it could not be read.
OUTBOX_PENDING = Gauge(
    "rentals_outbox_pending",
    "Outbox messages not yet delivered and not parked: waiting for their first attempt, a retry, or being sent.",
    multiprocess_mode="livemostrecent",
)
OUTBOX_PARKED = Gauge(
    "rentals_outbox_parked",
    "Outbox messages parked after OUTBOX_MAX_ATTEMPTS failed attempts (or a permanent refusal); people must look.",
    multiprocess_mode="livemostrecent",
)
OUTBOX_OLDEST_PENDING = Gauge(
    "rentals_outbox_oldest_pending_seconds",
    "Age of the oldest pending outbox message (0 when none).",
    multiprocess_mode="livemostrecent",
)

# Pool stats key -> counter; each is published as the increase since the last publish.
POOL_COUNTERS = {
    ACQUISITIONS: Counter("rentals_db_pool_acquisitions", "Connections handed out by the pools.", ["target"]),
    TIMEOUTS: Counter(
        "rentals_db_pool_timeouts", "Requests that found no free connection within DB_POOL_TIMEOUT.", ["target"]
    ),
    REJECTED: Counter(
        "rentals_db_pool_rejected", "Requests turned away because DB_POOL_MAX_WAITING already waited.", ["target"]
    ),
    CONNECTIONS_OPENED: Counter("rentals_db_pool_opened_connections", "Connections opened to the server.", ["target"]),
    CONNECTION_ERRORS: Counter(
        "rentals_db_pool_connection_errors", "Failed attempts to open a connection.", ["target"]
    ),
    DISCARDED: Counter("rentals_db_pool_discarded_connections", "Broken connections closed by the pools.", ["target"]),
    RECYCLED: Counter(
        "rentals_db_pool_recycled_connections", "Connections closed past DB_POOL_MAX_LIFETIME.", ["target"]
    ),
    SHRUNK: Counter(
        "rentals_db_pool_shrunk_connections", "Idle connections closed after DB_POOL_IDLE_TIMEOUT.", ["target"]
    ),
    LEAKS_DETECTED: Counter(
        "rentals_db_pool_leaks_detected", "Connections held past DB_POOL_LEAK_THRESHOLD.", ["target"]
    ),
    INTERRUPTED: Counter(
        "rentals_db_pool_interrupted_connections",
        "Connections cut off while held past their request's deadline.",
        ["target"],
    ),
    GENERATIONS_RETIRED: Counter(
        "rentals_db_pool_retired_generations",
        "Times a pool closed all its connections at once: one failed, or its server stopped taking writes.",
        ["target"],
    ),
    RETIRED: Counter(
        "rentals_db_pool_retired_connections", "Connections closed because their generation was retired.", ["target"]
    ),
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


# Set under a server that does not tell when a worker dies (granian: apps/api/server/granian.py).
_forget_dead_workers = [False]


def forget_dead_workers_when_read() -> None:
    """Drop the live gauges of dead workers whenever this process reads the metrics (forget_dead_workers)."""
    _forget_dead_workers[0] = True


def forget_dead_workers() -> None:
    """Drop the live gauges of every worker of this host that no longer runs.

    gunicorn's master does it when a worker exits (child_exit); a server without such a
    hook leaves the files of a killed worker behind. A worker is one of this process's
    siblings (the same parent), so a pid reused by an unrelated process counts as dead.
    """
    folder = multiprocess_dir()
    if folder is None:
        return
    pids = set()
    for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        pid = os.path.basename(path)[: -len(".db")].rsplit("_", 1)[1]
        if pid.isdigit():
            pids.add(int(pid))
    parent = os.getppid()
    for pid in pids:
        try:
            alive = psutil.Process(pid).ppid() == parent
        except psutil.Error:
            alive = False
        if not alive:
            multiprocess.mark_process_dead(pid, folder)


def _registry() -> CollectorRegistry:
    if multiprocess_dir() is None:
        return REGISTRY
    if _forget_dead_workers[0]:
        forget_dead_workers()
    registry = CollectorRegistry()
    # Skips files a booting or killed worker left unsized: /metrics and /api/health/db
    # must answer whatever state the other workers are in.
    SizedFilesCollector(registry)
    return registry


def exposition(*extra: Collector) -> tuple[bytes, str]:
    """Return the text exposition of every worker's metrics, then of `extra` collectors, and its content type."""
    flush_all()
    body = generate_latest(_registry())
    if extra:
        registry = CollectorRegistry(auto_describe=False)
        for collector in extra:
            registry.register(collector)
        body += generate_latest(registry)
    return body, CONTENT_TYPE_LATEST


class JobFigures(Collector):
    """The jobs' figures as one scrape read them from the database (jobs/status.py): the cluster's,
    the same from every host, so rules aggregate them with max, never sum."""

    def __init__(self, figures: list[dict[str, Any]]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        """Yield the families: runs by outcome, last success, missed slots, period, lag."""
        runs = CounterMetricFamily(
            "rentals_job_runs",
            "Runs of each job by outcome: succeeded, failed, expired (its scheduler died or overran its timeout,"
            " and another took it over), abandoned (its scheduler was stopped); all hosts.",
            labels=["job", "outcome"],
        )
        last_success = GaugeMetricFamily(
            "rentals_job_last_success_timestamp_seconds",
            "When each job's last successful run ended (Unix time); absent for a job that never succeeded.",
            labels=["job"],
        )
        missed = GaugeMetricFamily(
            "rentals_job_missed_slots",
            "Whole slots of each job passed since its last success (0 for a job that never ran).",
            labels=["job"],
        )
        period = GaugeMetricFamily("rentals_job_period_seconds", "Each job's period.", labels=["job"])
        lag = GaugeMetricFamily(
            "rentals_job_lag_seconds",
            "How long ago each job's earliest slot not yet succeeded started (0 while it is in the future).",
            labels=["job"],
        )
        for job in self._figures:
            name = job["name"]
            for outcome, count in job["runs"].items():
                runs.add_metric([name, outcome], count)
            if job["last_success_at"] is not None:
                last_success.add_metric([name], job["last_success_at"].timestamp())
            missed.add_metric([name], job["missed_slots"])
            period.add_metric([name], job["every_seconds"])
            lag.add_metric([name], job["lag_seconds"])
        yield from (runs, last_success, missed, period, lag)


class PoolPublisher:
    """Copies one pool's stats into the gauges and counters of its target, and flushes the
    buffered histograms; the pool's maintenance thread calls it about once a second."""

    def __init__(self, target: str = PRIMARY) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._published: dict[str, float] = {}
        for counter in POOL_COUNTERS.values():
            counter.labels(target)  # exported from the start, at 0

    def __call__(self, stats: dict[str, Any]) -> None:
        """Publish a stats snapshot of this process's pool."""
        flush_all()
        target = self.target
        with self._lock:
            for key, state in _GAUGE_STATES.items():
                POOL_WORKER_CONNECTIONS.labels(target, state).set(stats[key])
                POOL_CONNECTIONS.labels(target, state).set(stats[key])
            POOL_WORKER_WAITING.labels(target).set(stats[WAITING])
            POOL_WAITING.labels(target).set(stats[WAITING])
            for key, counter in POOL_COUNTERS.items():
                increase = stats.get(key, 0) - self._published.get(key, 0)
                if increase > 0:
                    counter.labels(target).inc(increase)
                    self._published[key] = stats[key]


def publish_outbox(backlog: dict[str, Any] | None) -> None:
    """Set the outbox gauges from models.outbox.backlog(); None: it could not be read (NaN)."""
    figures = backlog or {}
    OUTBOX_PENDING.set(figures.get("pending", math.nan))
    OUTBOX_PARKED.set(figures.get("parked", math.nan))
    OUTBOX_OLDEST_PENDING.set(figures.get("oldest_pending_seconds", math.nan))


# A replica as one worker last saw it; `livemin`/`livemax`: the worst view among the host's
# live workers, so one worker that cannot reach a replica shows.
REPLICA_UP = Gauge(
    "rentals_db_replica_up",
    "1 when this host's workers last reached the replica and found it replaying (in recovery), else 0.",
    ["target"],
    multiprocess_mode="livemin",
)
REPLICA_LAG_SECONDS = Gauge(
    "rentals_db_replica_lag_seconds",
    "How long ago the primary wrote the oldest WAL the replica has not replayed (0 when caught up).",
    ["target"],
    multiprocess_mode="livemax",
)
REPLICA_LAG_BYTES = Gauge(
    "rentals_db_replica_lag_bytes",
    "WAL bytes the primary has written that the replica has not replayed.",
    ["target"],
    multiprocess_mode="livemax",
)
REPLICA_FALLBACKS = Counter(
    "rentals_db_replica_fallbacks",
    "Reads meant for a replica that the primary served, by replica and reason"
    " (down, busy, lost, conflict: cancelled by a recovery conflict).",
    ["target", "reason"],
)
READS = Counter(
    "rentals_db_reads",
    "Reads that could go to a replica (replica_ok), by the target that served them.",
    ["target"],
)


def publish_replica(target: str, up: bool, lag_seconds: float | None, lag_bytes: int | None) -> None:
    """Set one replica's gauges from this worker's last check; an unknown lag is NaN."""
    REPLICA_UP.labels(target).set(1 if up else 0)
    REPLICA_LAG_SECONDS.labels(target).set(math.nan if lag_seconds is None else lag_seconds)
    REPLICA_LAG_BYTES.labels(target).set(math.nan if lag_bytes is None else lag_bytes)


def publish_pooler(database: str, user: str, figures: dict[str, Any] | None) -> None:
    """Set the PgBouncer gauges of pool (database, user) from pgbouncer.read_figures(); None: it could not be read."""
    unknown = math.nan
    pool = figures["pool"] if figures else {}
    stats = figures["stats"] if figures else {}
    limits = figures["limits"] if figures else {}
    POOLER_UP.labels(database, user).set(1 if figures else 0)
    for key, state in _POOLER_CLIENT_STATES.items():
        POOLER_CLIENTS.labels(database, user, state).set(pool.get(key, unknown))
    for key, state in _POOLER_SERVER_STATES.items():
        POOLER_SERVERS.labels(database, user, state).set(pool.get(key, unknown))
    POOLER_MAX_WAIT.labels(database, user).set(pool.get(pgbouncer.MAXWAIT_MS, unknown) / 1000)
    for key, what in _POOLER_AVERAGES.items():
        POOLER_AVERAGE.labels(database, user, what).set(stats.get(key, unknown) / 1000)
    for key, what in _POOLER_RATES.items():
        POOLER_RATE.labels(database, user, what).set(stats.get(key, unknown))
    for key in _POOLER_LIMITS:
        POOLER_LIMIT.labels(database, user, key).set(limits.get(key, unknown))


def _lock_path(name: str) -> str | None:
    # A lock file in the metrics folder that the host's workers share; None in a single process.
    folder = multiprocess_dir()
    return os.path.join(folder, name) if folder else None


def publish_probe(target: str, up: bool, seconds: float) -> None:
    """Set rentals_database_up and rentals_database_probe_seconds of `target`."""
    DATABASE_UP.labels(target).set(1 if up else 0)
    DATABASE_PROBE_SECONDS.labels(target).set(seconds)


# Lock file in the metrics folder: its holder is the worker that reads PgBouncer for the host.
POOLER_PROBE_LOCK = "pgbouncer-probe.lock"


class PoolerPublisher:
    """Reads PgBouncer's figures for this host and sets the PgBouncer gauges, from one worker per host.

    Every worker's pool maintenance thread calls `tick()` about once a second; only the worker
    holding the host's lock (a HostJob on POOLER_PROBE_LOCK in the metrics folder; without a
    folder, this process) reads, every DB_PROBE_INTERVAL_SECONDS, in a thread of its own: an
    unreachable console holds that thread for up to pgbouncer.CONNECT_TIMEOUT, never the
    pool's maintenance. When the reader dies, the next worker to tick takes over and reads at
    once. The read also answers for the `pgbouncer` target of rentals_database_up.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._database, self._user = pgbouncer.our_pool(settings.database_url)
        self._job = HostJob(
            _lock_path(POOLER_PROBE_LOCK),
            settings.db_probe_interval_seconds,
            self._read,
            "pgbouncer-probe",
            "worker %s reads PgBouncer's figures for this host",
        )
        self._failing = False

    def tick(self) -> None:
        """Start a read in the background if this worker reads for the host and one is due; never blocks."""
        self._job.tick()

    def _read(self) -> None:
        started = time.monotonic()
        try:
            figures = pgbouncer.read_figures(self._settings)
        except pgbouncer.PoolerUnreachable as exc:
            if not self._failing:  # once per outage, not every few seconds
                logger.warning("cannot read PgBouncer's figures for the metrics: %s", exc)
            self._failing = True
            publish_pooler(self._database, self._user, None)
            publish_probe(PGBOUNCER, False, time.monotonic() - started)
            return
        if self._failing:
            logger.info("PgBouncer's figures can be read again")
        self._failing = False
        publish_pooler(self._database, self._user, figures)
        publish_probe(PGBOUNCER, True, time.monotonic() - started)

    def close(self) -> None:
        """Stop reading for the host and let another process take over."""
        self._job.close()


# Lock file in the metrics folder: its holder is the worker that probes the database for the host.
DATABASE_PROBE_LOCK = "database-probe.lock"


class DatabaseProbe:
    """Probes each database target for this host (probe.probe: connect, SELECT 1) and sets rentals_database_up.

    One worker per host probes, every DB_PROBE_INTERVAL_SECONDS, whether requests come or
    not; the others only tick (a HostJob on DATABASE_PROBE_LOCK, as PoolerPublisher). Each
    probe is bounded by DB_CONNECT_TIMEOUT, the wait the pool itself grants a connect, so
    the result is at most an interval plus that old. `targets` maps a target's name
    (`primary`, `replica1`...) to its libpq URL; they are probed one after another.
    """

    def __init__(self, settings: Settings, targets: Mapping[str, str]) -> None:
        self._targets = dict(targets)
        self._timeout = settings.db_connect_timeout
        self._job = HostJob(
            _lock_path(DATABASE_PROBE_LOCK),
            settings.db_probe_interval_seconds,
            self._probe_all,
            "database-probe",
            "worker %s probes the database for this host",
        )
        self._failing: set[str] = set()

    def tick(self) -> None:
        """Start the probes in the background if this worker probes for the host and they are due; never blocks."""
        self._job.tick()

    def _probe_all(self) -> None:
        for target, dsn in self._targets.items():
            started = time.monotonic()
            try:
                seconds = probe.probe(dsn, self._timeout)
            except probe.TargetUnreachable as exc:
                if target not in self._failing:  # once per outage, not every few seconds
                    logger.warning("database probe: %s does not answer: %s", target, exc)
                self._failing.add(target)
                publish_probe(target, False, time.monotonic() - started)
                continue
            if target in self._failing:
                logger.info("database probe: %s answers again", target)
            self._failing.discard(target)
            publish_probe(target, True, seconds)

    def close(self) -> None:
        """Probe no more (waiting for a probe under way), and let another process take over."""
        self._job.close(wait=self._timeout)


def worker_pool_figures(target: str = PRIMARY) -> dict[int, dict[str, float]]:
    """Return the last published figures of every live worker's pool of `target` on this host, by pid.

    Empty in a single process (no shared folder): the caller uses its own pool's stats.
    """
    if multiprocess_dir() is None:
        return {}
    workers: dict[int, dict[str, float]] = defaultdict(dict)
    states = {state: key for key, state in _GAUGE_STATES.items()}
    for family in _registry().collect():
        if family.name == "rentals_db_pool_worker_connections":
            for sample in family.samples:
                if sample.labels.get("target") == target:
                    workers[int(sample.labels["pid"])][states[sample.labels["state"]]] = sample.value
        elif family.name == "rentals_db_pool_worker_waiting_requests":
            for sample in family.samples:
                if sample.labels.get("target") == target:
                    workers[int(sample.labels["pid"])][WAITING] = sample.value
    # A worker that has not published its pool yet (just booted) has only the zero that
    # prometheus_client writes at import; it is left out rather than counted as empty.
    return {pid: figures for pid, figures in workers.items() if MAX_CONNECTIONS in figures}


def database_probe_results() -> dict[str, dict[str, Any]]:
    """Return this host's last probe of each target: {target: {"up": bool, "seconds": float}}.

    Empty before the first probe (and where no worker probes).
    """
    results: dict[str, dict[str, Any]] = defaultdict(dict)
    fields = {"rentals_database_up": "up", "rentals_database_probe_seconds": "seconds"}
    for family in _registry().collect():
        field = fields.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            value = sample.value == 1 if field == "up" else round(sample.value, 4)
            results[sample.labels["target"]][field] = value
    return dict(results)
