"""CPU time spent by the app under test, by PostgreSQL, by PgBouncer and by wrk during one measured point.

On 2 shared cores throughput is bounded by CPU: the app's workers, the database server
and the load generator compete for the same cores. Dividing each one's CPU seconds by
the requests served shows where a request's cost goes, and what the ceiling is.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


def _tree_seconds(pid: int) -> float:
    """Return the user+system CPU seconds of a process, its live descendants and its reaped children.

    A reaped child's time is in its parent's children_user/children_system, so processes
    that come and go (PostgreSQL backends in connect-per-request mode) are counted too. A
    process that exits while the snapshot is taken can be missed once: a few backends'
    time, small against the seconds a point lasts.
    """
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        descendants = root.children(recursive=True)
    except psutil.Error:  # gone, or not ours to read
        return 0.0
    for process in descendants:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def wait_idle(pid: int, *, busy: float = 0.1, interval: float = 0.25, timeout: float = 20.0) -> float:
    """Wait until the process tree of `pid` uses under `busy` of a core over one `interval`; return the seconds waited.

    wrk stops when its duration ends, but the requests already queued at the app still run
    (their replies go to closed sockets): a slow app's backlog (null mode at 256
    connections) would otherwise run during the next point, another app's. Gives up after
    `timeout` seconds.
    """
    started = time.monotonic()
    used = _tree_seconds(pid)
    while time.monotonic() - started < timeout:
        time.sleep(interval)
        now = _tree_seconds(pid)
        if now - used < busy * interval:
            break
        used = now
    return time.monotonic() - started


def _own_children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def postmaster_pid(data_dir: Path) -> int | None:
    """Return the PostgreSQL server's pid from its postmaster.pid file, or None."""
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class CpuSnapshot:
    """CPU seconds so far: the app's tree, the database's, our reaped children (wrk), PgBouncer (or None)."""

    app: float
    database: float
    load: float
    pooler: float | None = None


def snapshot(app_pid: int, database_pid: int | None, pooler_pid: int | None = None) -> CpuSnapshot:
    """Return the CPU seconds used so far by each party."""
    return CpuSnapshot(
        _tree_seconds(app_pid),
        _tree_seconds(database_pid) if database_pid else 0.0,
        _own_children_seconds(),
        _tree_seconds(pooler_pid) if pooler_pid else None,
    )


def per_request_us(before: CpuSnapshot, after: CpuSnapshot, requests: int) -> dict[str, float]:
    """Return microseconds of CPU per request for the app, the database, wrk and PgBouncer between two snapshots.

    The "pooler" key is there only when the run has a PgBouncer (its CPU is taken at every
    point: next to nothing while a direct app runs).
    """
    if requests <= 0:
        return {}
    per_request = {
        "app": round((after.app - before.app) / requests * 1e6, 1),
        "database": round((after.database - before.database) / requests * 1e6, 1),
        "load": round((after.load - before.load) / requests * 1e6, 1),
    }
    if before.pooler is not None and after.pooler is not None:
        per_request["pooler"] = round((after.pooler - before.pooler) / requests * 1e6, 1)
    return per_request
