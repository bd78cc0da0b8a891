"""What every pool shares: the stats keys, the stats of a pool not yet opened, and reconnect backoff."""

from __future__ import annotations

from ..backoff import doubling_delay
from .errors import DatabaseUnavailable

# Stats keys: stable names shared by the health endpoint, the metrics and the docs.
MODE = "mode"
MIN_CONNECTIONS = "min_connections"
MAX_CONNECTIONS = "max_connections"
IN_USE = "in_use"
AVAILABLE = "available"
TOTAL = "total"
WAITING = "waiting"
MAX_WAITING = "max_waiting"
PEAK_IN_USE = "peak_in_use"
ACQUISITIONS = "acquisitions"
WAITS = "waits"
WAIT_TIME_MS = "wait_time_ms"
MAX_WAIT_MS = "max_wait_ms"
TIMEOUTS = "timeouts"
REJECTED = "rejected"
CONNECTIONS_OPENED = "connections_opened"
CONNECT_TIME_MS = "connect_time_ms"
CONNECTION_ERRORS = "connection_errors"
DISCARDED = "discarded"
RECYCLED = "recycled"
SHRUNK = "shrunk"
PINGS = "pings"
PING_FAILURES = "ping_failures"
LEAKS_DETECTED = "leaks_detected"
INTERRUPTED = "interrupted"
GENERATIONS_RETIRED = "generations_retired"
RETIRED = "retired"

COUNTERS = (
    ACQUISITIONS,
    WAITS,
    WAIT_TIME_MS,
    MAX_WAIT_MS,
    TIMEOUTS,
    REJECTED,
    CONNECTIONS_OPENED,
    CONNECT_TIME_MS,
    CONNECTION_ERRORS,
    DISCARDED,
    RECYCLED,
    SHRUNK,
    PINGS,
    PING_FAILURES,
    LEAKS_DETECTED,
    INTERRUPTED,
    GENERATIONS_RETIRED,
    RETIRED,
    PEAK_IN_USE,
)
# The figures that describe a pool at one moment (the rest are counters since it opened).
GAUGES = (IN_USE, AVAILABLE, TOTAL, WAITING, MAX_CONNECTIONS)
# Counters that accumulate milliseconds, rounded in a snapshot.
MILLISECONDS = (WAIT_TIME_MS, MAX_WAIT_MS, CONNECT_TIME_MS)


def empty_stats(mode: str, min_size: int, max_size: int, max_waiting: int) -> dict[str, object]:
    """Return the stats of a pool that holds no connection and has served nothing yet."""
    return {
        MODE: mode,
        MIN_CONNECTIONS: min_size,
        MAX_CONNECTIONS: max_size,
        IN_USE: 0,
        AVAILABLE: 0,
        TOTAL: 0,
        WAITING: 0,
        MAX_WAITING: max_waiting,
        **dict.fromkeys(COUNTERS, 0),
    }


class ConnectionAttempt:
    """Backoff after failed connects: while it runs, callers fail fast instead of trying again.

    The window grows from INITIAL_DELAY, doubling per failure, up to MAX_DELAY; a success
    ends it. `failed` and `succeeded` must be called under the pool's lock; `backing_off`
    is a single read, safe without it. A caller turned away meanwhile gets the last
    failure's kind of error (`refusal`): unreachable, or a server that takes no writes.
    """

    INITIAL_DELAY = 0.1
    MAX_DELAY = 1.0

    def __init__(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
        self.last_error: DatabaseUnavailable = DatabaseUnavailable("the database is unreachable")

    def backing_off(self, now: float) -> bool:
        """Return True while a new connect should not be tried yet."""
        return now < self.retry_at

    def refusal(self) -> DatabaseUnavailable:
        """Return the error for a caller turned away while backing off: the last failure's, retried shortly."""
        return type(self.last_error)(f"{self.last_error}; retrying shortly")

    def failed(self, now: float, error: DatabaseUnavailable) -> float:
        """Record a failed connect (`error`) at `now`; return the seconds until the next may be tried."""
        self.last_error = error
        self.failures += 1
        delay = doubling_delay(self.INITIAL_DELAY, self.MAX_DELAY, self.failures)
        self.retry_at = now + delay
        return delay

    def succeeded(self) -> int:
        """Record a successful connect; return how many failures it ended."""
        failures, self.failures, self.retry_at = self.failures, 0, 0.0
        return failures
