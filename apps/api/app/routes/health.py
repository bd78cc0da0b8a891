"""Health endpoints: is the process up, how is the pool, does a real query work."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import psutil
import psycopg2
from flask import Blueprint, current_app, jsonify

from .. import capacity, metrics, notifications, pgbouncer
from ..auth import require_health_token
from ..capacity import RESERVED_CONNECTIONS_SQL, Budget, PoolerLimits
from ..config import Settings
from ..errors import retry_after_header
from ..jobs import status as job_status
from ..models.database import (
    DatabaseUnavailable,
    PoolTimeout,
    ServerReadOnly,
    TooManyRequests,
    capacity_info,
    execute_query_one,
    monitoring_wait,
    pool_stats,
    replica_health,
)
from ..pool.base import GAUGES

bp = Blueprint("health", __name__, url_prefix="/api/health")

logger = logging.getLogger(__name__)

STARTED_AT = time.time()


@bp.get("")
def health():
    """Say the process is up; touches no database."""
    return {
        "status": "ok",
        "pid": os.getpid(),
        "uptime_seconds": round(time.time() - STARTED_AT, 1),
        "app_env": current_app.config["SETTINGS"].app_env,
    }


def _probe_database(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        row = execute_query_one(
            "SELECT current_setting('max_connections')::int AS server_max_connections,"
            f" {RESERVED_CONNECTIONS_SQL} AS server_reserved_connections,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int"
            " AS server_connections,"
            " pg_is_in_recovery() AS in_recovery,"
            " current_setting('transaction_read_only') = 'on' AS read_only",
            timeout=monitoring_wait(settings),
        )
    except (PoolTimeout, TooManyRequests) as exc:
        return {"reachable": None, "busy": True, "error": str(exc)}
    except ServerReadOnly as exc:
        return {"reachable": True, "writable": False, "error": str(exc)}
    except DatabaseUnavailable as exc:
        return {"reachable": False, "error": str(exc)}
    except psycopg2.Error as exc:
        # An SQLSTATE means the server answered (a timeout, say): reachable, but not well.
        return {"reachable": exc.pgcode is not None, "error": (exc.pgerror or type(exc).__name__).strip()}
    in_recovery, read_only = row.pop("in_recovery"), row.pop("read_only")
    body = {"reachable": True, "writable": not (in_recovery or read_only)}
    if not body["writable"]:
        body["error"] = f"the database server is {'in recovery' if in_recovery else 'read-only'}"
    return {**body, "latency_ms": round((time.perf_counter() - started) * 1000, 3), **row}


def _not_the_primary(database: dict[str, Any]) -> list[str]:
    # The server the pool takes for the primary does not take writes: every write answers 503.
    if database.get("writable") is not False:
        return []
    return [
        f"{database['error']}; the server DATABASE_URL leads to is not a writable primary (a failover under way, a"
        " demoted primary, or default_transaction_read_only set); writes answer 503 until a host that takes writes"
        " answers. After a failover DATABASE_URL must list the new primary (several hosts with"
        " target_session_attrs=read-write)."
    ]


def _read_pooler(settings: Settings) -> dict[str, Any] | None:
    # PgBouncer's figures for our pool; None without a pooler.
    if settings.db_pooler != "pgbouncer":
        return None
    if not settings.pgbouncer_admin_url:
        return {"monitored": False}
    body: dict[str, Any] = {"monitored": True, "admin_url": settings.pgbouncer_admin_url_redacted()}
    try:
        figures = pgbouncer.read_figures(settings)
    except pgbouncer.PoolerUnreachable as exc:
        return {**body, "reachable": False, "error": str(exc)}
    return {**body, "reachable": True, **figures}


def _queued_at_pooler(pooler: dict[str, Any] | None) -> str | None:
    # Clients already wait at PgBouncer with no idle server connection: a probe would wait
    # behind them, up to PgBouncer's query_wait_timeout, and hold this request as long.
    if not pooler or not pooler.get("reachable"):
        return None
    pool = pooler["pool"]
    if pool[pgbouncer.CL_WAITING] and not pool[pgbouncer.SV_IDLE]:
        return (
            f"not probed: {pool[pgbouncer.CL_WAITING]} clients already wait at PgBouncer for a server connection,"
            " and the probe would wait behind them"
        )
    return None


def _all_workers(stats: dict[str, Any]) -> dict[str, Any]:
    # Other workers' figures are what they last published (at most about a second old);
    # this worker's are live.
    figures = metrics.worker_pool_figures()
    figures[os.getpid()] = {key: stats[key] for key in GAUGES}
    workers = [{"pid": pid, **{key: int(f.get(key, 0)) for key in GAUGES}} for pid, f in sorted(figures.items())]
    summed = {key: sum(w[key] for w in workers) for key in GAUGES}
    return {"worker_count": len(workers), **summed, "workers": workers}


def _server_limits(database: dict[str, Any]) -> tuple[int | None, int | None]:
    # The probe's figures when it reached the server, else what the startup check measured.
    if database.get("server_max_connections"):
        return database["server_max_connections"], database["server_reserved_connections"]
    measured = capacity_info() or {}
    return measured.get("server_max_connections"), measured.get("server_reserved_connections")


@bp.get("/db")
@require_health_token
def database_health():
    """Report the pools (this worker's, this host's, PgBouncer's), status and advice; 503 when the database is down.

    An unreachable PgBouncer console is reported (a warning), never a failure of its own;
    so is a replica that is down or lags (`replicas`: each one's state, replay lag and this
    worker's pool to it), whose reads the primary serves meanwhile.
    """
    settings: Settings = current_app.config["SETTINGS"]
    # PgBouncer first: its figures say whether the probe may go through it without queueing.
    pooler = _read_pooler(settings)
    skipped = _queued_at_pooler(pooler)
    database = {"reachable": None, "error": skipped} if skipped else _probe_database(settings)
    server_max, reserved = _server_limits(database)
    if pooler and pooler.get("reachable"):
        limits = PoolerLimits.from_figures(pooler["limits"])
        pooler["capacity"] = capacity.pooled_capacity(Budget.from_settings(settings), limits, server_max, reserved)
    stats = pool_stats()
    all_workers = _all_workers(stats)
    warnings = (
        _not_the_primary(database)
        + capacity.pool_warnings(settings, all_workers, database)
        + capacity.pooler_warnings(pooler)
    )
    replicas = replica_health()
    if replicas is not None:
        warnings += replicas[1]
    if database["reachable"]:
        warnings += _job_warnings(settings)
    if database["reachable"] is False or database.get("writable") is False:
        status = "error"
    elif warnings:
        status = "warning"
    else:
        status = "healthy"
    body = {
        "status": status,
        "pid": os.getpid(),
        "database": database,
        "pool_stats": stats,
        "all_workers": all_workers,
        "probe": metrics.database_probe_results(),
        "warnings": warnings,
        "recommendations": capacity.recommendations(settings, stats, server_max, reserved, pooler),
    }
    if pooler is not None:
        body["pooler"] = pooler
    if replicas is not None:
        body["replicas"] = replicas[0]
    response = jsonify(body)
    if status == "error":
        response.status_code = 503
        response.headers.update(retry_after_header())
    return response


def _job_warnings(settings: Settings) -> list[str]:
    # A job that missed its slots makes the database's status a warning; figures that cannot
    # be read (tables not migrated yet, a busy pool) add nothing here: /api/health/jobs says why.
    try:
        return job_status.warnings(job_status.figures(settings, timeout=monitoring_wait(settings)))
    except (DatabaseUnavailable, psycopg2.Error) as exc:
        logger.warning("cannot read the jobs' figures for /api/health/db: %s", str(exc).strip())
        return []


@bp.get("/jobs")
@require_health_token
def jobs_health():
    """Report each job's last success and failure, next due time, lag and runs, and the outbox's backlog.

    Status warning when a job has missed MISSED_SLOTS_WARNING slots since its last success;
    503 when the database cannot answer.
    """
    settings: Settings = current_app.config["SETTINGS"]
    try:
        figures = job_status.figures(settings, timeout=monitoring_wait(settings))
    except psycopg2.errors.UndefinedTable as exc:
        response = jsonify(
            {"status": "error", "error": f"the jobs' tables are missing ({str(exc).strip()}): run `db upgrade`"}
        )
        response.status_code = 503
        return response
    warnings = job_status.warnings(figures)
    return {
        "status": "warning" if warnings else "healthy",
        "jobs": figures,
        "outbox": notifications.backlog(timeout=monitoring_wait(settings)),
        "warnings": warnings,
    }


@bp.get("/db/test")
@require_health_token
def database_test():
    """Run a real query and report its latency; 503 when the database cannot answer."""
    started = time.perf_counter()
    row = execute_query_one("SELECT 1 AS test, now() AS current_time")
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    return {"status": "ok", "test_result": row, "latency_ms": latency_ms}


# The seeds' thresholds, in percent.
SYSTEM_THRESHOLDS = {"cpu": 80.0, "memory": 85.0, "disk": 90.0}


@bp.get("/system")
@require_health_token
def system_health():
    """Report CPU, memory, disk, this process's uptime and open files; status warning past a threshold."""
    process = psutil.Process()
    usage = {
        "cpu": psutil.cpu_percent(interval=0.1),
        "memory": psutil.virtual_memory().percent,
        "disk": psutil.disk_usage(str(current_app.root_path)).percent,
    }
    warnings = [
        f"{name} usage {value:.1f}% is above {SYSTEM_THRESHOLDS[name]:.0f}%"
        for name, value in usage.items()
        if value > SYSTEM_THRESHOLDS[name]
    ]
    memory = psutil.virtual_memory()
    return {
        "status": "warning" if warnings else "healthy",
        "pid": os.getpid(),
        "cpu": {"percent": usage["cpu"], "count": psutil.cpu_count(), "load_average": list(psutil.getloadavg())},
        "memory": {"percent": usage["memory"], "total_bytes": memory.total, "available_bytes": memory.available},
        "disk": {"percent": usage["disk"], "path": str(current_app.root_path)},
        "process": {
            "uptime_seconds": round(time.time() - process.create_time(), 1),
            "open_files": process.num_fds(),
            "threads": process.num_threads(),
            "rss_bytes": process.memory_info().rss,
        },
        "thresholds_percent": SYSTEM_THRESHOLDS,
        "warnings": warnings,
    }
