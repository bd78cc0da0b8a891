"""SQL for the dashboard: every figure in one statement, one database round trip.

Definitions (docs/API.md repeats them):
- revenue: total_cents of active and returned rentals, counted on their start date;
  "current month" runs from the 1st to today, "last 30 days" is today and the 29 before;
- overdue: active rentals whose end_date (the day they were due back) is before today;
- utilisation: days active or returned rentals occupied active products within the last
  30 days, over 30 days times the number of active products;
- top products: the ten with the most revenue over the last 30 days.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import current_app

from .database import execute_query_one

_CACHE = "rentals_dashboard_cache"

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
    now() AS generated_at,
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


def get_dashboard() -> dict[str, Any]:
    """Return the dashboard figures, computed by the database in one statement."""
    row = execute_query_one(DASHBOARD_SQL, replica_ok=True)
    booked, available = row["booked_days"], row["available_days"]
    return {
        "as_of": row["as_of"],
        "generated_at": row["generated_at"],
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


class _DashboardCache:
    """The last dashboard of this process and when it was computed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: dict[str, Any] | None = None
        self.computed_at = 0.0


def get_dashboard_cached() -> dict[str, Any]:
    """Return the dashboard, recomputed at most once every DASHBOARD_CACHE_SECONDS per worker.

    The statement reads the whole rentals table's status counts, a cost that grows with the
    table; a dashboard polled by every staff screen would otherwise cost one such scan per poll.
    One thread recomputes while the others wait for its answer (no stampede). Its
    `generated_at` says how old the figures are. 0 seconds disables the cache.
    """
    ttl = current_app.config["SETTINGS"].dashboard_cache_seconds
    if ttl <= 0:
        return get_dashboard()
    cache = current_app.extensions.setdefault(_CACHE, _DashboardCache())
    value = cache.value
    if value is not None and time.monotonic() - cache.computed_at < ttl:
        return value
    with cache.lock:
        if cache.value is None or time.monotonic() - cache.computed_at >= ttl:
            cache.value = get_dashboard()
            cache.computed_at = time.monotonic()
        return cache.value
