"""SQL for the dashboard: every figure in one statement, one database round trip.

Definitions (docs/API.md repeats them):
- revenue: total_cents of active and returned rentals, counted on their start date;
  "current month" runs from the 1st to today, "last 30 days" is today and the 29 before;
- overdue: active rentals whose end_date (the day they were due back) is before today;
- utilisation: days active or returned rentals occupied active products within the last
  30 days, over 30 days times the number of active products;
- top products: the ten with the most revenue over the last 30 days.

The figures live in a snapshot (table dashboard_snapshot), computed by one process at a
time for every worker and host: the refresh_dashboard job every DASHBOARD_REFRESH_SECONDS,
or, when there is no snapshot yet, the first request (the others wait for it, they do not
compute too), or, when the snapshot is older than LATE_PERIODS refresh periods (the job is
late or not running), the first request that takes the computation's lock while the
others keep answering from the old one. One computation at a time is a transaction-level
advisory lock, which ends with its transaction: nothing outlives it, so this works through
PgBouncer in transaction mode.

A request reads the snapshot in one primary-key lookup, and its worker reuses what it
read for REREAD_SECONDS: the replies cost a lookup per worker per second, not one per
request. Every reply carries `generated_at` and `age_seconds`, its figures' age.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from flask import current_app
from psycopg2.extras import Json

from ..serialization import dumps_bytes
from .database import execute_query_one, fetch_one, transaction

logger = logging.getLogger(__name__)

_COPY = "rentals_dashboard_snapshot"
# A worker reads the snapshot again once what it read is this old (seconds).
REREAD_SECONDS = 1.0
# A request computes the snapshot itself when it is older than this many refresh periods.
LATE_PERIODS = 2
# The computation's transaction-level advisory lock: any fixed number no other lock uses.
LOCK_ID = 7_261_942_018

DASHBOARD_SQL = """
WITH
window_rentals AS (
    -- Active and returned rentals that started this month or in the last 30 days.
    SELECT product_id, start_date, total_cents
    FROM rentals
    WHERE status IN ('active', 'returned')
      AND start_date >= least(date_trunc('month', current_date)::date, current_date - 29)
      AND start_date <= current_date
),
by_status AS (
    SELECT s.status, (SELECT count(*) FROM rentals r WHERE r.status = s.status) AS n
    FROM (VALUES ('reserved'), ('active'), ('returned'), ('cancelled')) AS s (status)
),
out_now AS (
    SELECT count(*) AS active, count(*) FILTER (WHERE end_date < current_date) AS overdue
    FROM rentals WHERE status = 'active'
),
revenue AS (
    SELECT
        coalesce(sum(total_cents) FILTER (WHERE start_date >= date_trunc('month', current_date)::date), 0)
            AS current_month,
        coalesce(sum(total_cents) FILTER (WHERE start_date >= current_date - 29), 0) AS last_30_days
    FROM window_rentals
),
utilisation AS (
    SELECT coalesce(sum(least(end_date, current_date + 1) - greatest(start_date, current_date - 29)), 0)
        AS booked_days
    FROM rentals r JOIN products p ON p.id = r.product_id AND p.active
    WHERE r.status IN ('active', 'returned')
      AND r.end_date > current_date - 29
      AND r.start_date <= current_date
      -- An overlapping rental starts at most the longest rental's length before the window.
      AND r.start_date > current_date - 29 - (SELECT coalesce(max(end_date - start_date), 0) FROM rentals)
),
top_products AS (
    SELECT t.product_id, p.sku, p.name, t.revenue_cents, t.rentals
    FROM (
        SELECT product_id, sum(total_cents) AS revenue_cents, count(*) AS rentals
        FROM window_rentals
        WHERE start_date >= current_date - 29
        GROUP BY product_id
        ORDER BY revenue_cents DESC, product_id
        LIMIT 10
    ) t
    JOIN products p ON p.id = t.product_id
)
SELECT
    current_date AS as_of,
    statement_timestamp() AS generated_at,
    (SELECT json_object_agg(status, n) FROM by_status) AS rentals_by_status,
    (SELECT active FROM out_now) AS active_rentals,
    (SELECT overdue FROM out_now) AS overdue_rentals,
    (SELECT current_month FROM revenue) AS revenue_current_month,
    (SELECT last_30_days FROM revenue) AS revenue_last_30_days,
    (SELECT booked_days FROM utilisation) AS booked_days,
    (SELECT count(*) * 30 FROM products WHERE active) AS available_days,
    (SELECT coalesce(json_agg(t ORDER BY t.revenue_cents DESC, t.product_id), '[]') FROM top_products t)
        AS top_products,
    (SELECT count(*) FROM customers WHERE created_at >= now() - interval '30 days') AS new_customers
"""


_READ = (
    "SELECT figures, generated_at, extract(epoch FROM clock_timestamp() - generated_at)::float AS age_seconds"
    " FROM dashboard_snapshot WHERE id = 1"
)


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    booked, available = row["booked_days"], row["available_days"]
    return {
        "as_of": row["as_of"],
        "rentals_by_status": row["rentals_by_status"],
        "active_rentals": row["active_rentals"],
        "overdue_rentals": row["overdue_rentals"],
        "revenue_cents": {"current_month": row["revenue_current_month"], "last_30_days": row["revenue_last_30_days"]},
        "utilisation_last_30_days": {
            "booked_days": booked,
            "available_days": available,
            "ratio": round(booked / available, 4) if available else 0.0,
        },
        "top_products_last_30_days": row["top_products"],
        "new_customers_last_30_days": row["new_customers"],
    }


def refresh_snapshot(*, wait: bool = False, older_than: float = 0.0) -> dict[str, Any]:
    """Compute the dashboard into its snapshot unless another process is at it; return what happened.

    Takes the computation's lock for the transaction: `wait` waits for it (lock_timeout
    bounds the wait), otherwise a lock held elsewhere means someone is computing and this
    call does nothing. Under the lock, a snapshot younger than `older_than` seconds is kept.
    Returns {"refreshed": bool, "compute_ms": ..., "age_seconds": ...} (the job's summary).
    """
    with transaction() as cur:
        cur.execute(
            f"SELECT {'pg_advisory_xact_lock' if wait else 'pg_try_advisory_xact_lock'}(%s) AS locked", (LOCK_ID,)
        )
        if fetch_one(cur)["locked"] is False:
            return {"refreshed": False, "reason": "computing elsewhere"}
        cur.execute(_READ)
        current = fetch_one(cur)
        if current is not None and current["age_seconds"] < older_than:
            return {"refreshed": False, "reason": "fresh", "age_seconds": round(current["age_seconds"], 3)}
        started = time.perf_counter()
        cur.execute(DASHBOARD_SQL)
        row = fetch_one(cur)
        compute_ms = round((time.perf_counter() - started) * 1000)
        cur.execute(
            "INSERT INTO dashboard_snapshot (id, figures, generated_at, compute_ms) VALUES (1, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET figures = EXCLUDED.figures, generated_at = EXCLUDED.generated_at,"
            " compute_ms = EXCLUDED.compute_ms, refreshes = dashboard_snapshot.refreshes + 1",
            (Json(_figures(row), dumps=lambda value: dumps_bytes(value).decode()), row["generated_at"], compute_ms),
        )
    logger.info("dashboard snapshot computed in %s ms", compute_ms)
    return {"refreshed": True, "compute_ms": compute_ms}


class _SnapshotCopy:
    """The snapshot row this worker read last, and when (monotonic clock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.row: dict[str, Any] | None = None
        self.read_at = -math.inf


def _read_snapshot() -> dict[str, Any]:
    row = execute_query_one(_READ)
    if row is None:
        # No snapshot yet: the first request computes it, the others wait for that one.
        refresh_snapshot(wait=True, older_than=math.inf)
        return execute_query_one(_READ)
    late = LATE_PERIODS * current_app.config["SETTINGS"].dashboard_refresh_seconds
    if row["age_seconds"] >= late and refresh_snapshot(older_than=late)["refreshed"]:
        return execute_query_one(_READ)
    return row


def get_dashboard() -> dict[str, Any]:
    """Return the dashboard from its snapshot, with `generated_at` and `age_seconds` (see the module's docstring)."""
    copy: _SnapshotCopy = current_app.extensions.setdefault(_COPY, _SnapshotCopy())
    row, read_at = copy.row, copy.read_at
    if row is None or time.monotonic() - read_at >= REREAD_SECONDS:
        row, read_at = _read_snapshot(), time.monotonic()
        with copy.lock:
            copy.row, copy.read_at = row, read_at
    age = row["age_seconds"] + time.monotonic() - read_at
    return {**row["figures"], "generated_at": row["generated_at"], "age_seconds": round(age, 3)}
