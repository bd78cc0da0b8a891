"""EXPLAIN the API's list, detail, dashboard and write statements on 1M rentals; write docs/explain-1m.txt.

    .venv/bin/python docs/explain_1m.py [--rentals 1000000] [--keep DIR]

Starts a scratch embedded PostgreSQL (default settings, fsync on), applies the
migrations, seeds 100k customers, 10k products and the rentals with the project's own
seed, then runs EXPLAIN (ANALYZE, BUFFERS) on exactly the SQL the model functions send:
each function runs once with its execute_* helper swapped for one that records the
statement, and the recorded statement is explained. Writes stay inside a rolled-back
transaction. Takes about a minute; the server is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from apps.api.app import create_app, migrate, seed  # noqa: E402
from apps.api.app.errors import APIError  # noqa: E402
from apps.api.app.models import customers, dashboard, database, products, rentals  # noqa: E402
from apps.api.app.pagination import encode_cursor  # noqa: E402
from devtools.embedded_pg import EmbeddedPostgres  # noqa: E402

REPORT = ROOT / "docs" / "explain-1m.txt"


@contextmanager
def recording(module) -> Callable[[], tuple[str, object]]:
    """Swap a model module's execute_* helpers for recorders; yield a getter of the first statement."""
    recorded: list[tuple[str, object]] = []
    names = ("execute_query", "execute_query_one", "execute_write")
    saved = {name: getattr(module, name) for name in names if hasattr(module, name)}

    def record(sql, params=None, **_):
        recorded.append((sql, params))
        return None

    for name in saved:
        setattr(module, name, record)
    try:
        yield lambda: recorded[0]
    finally:
        for name, helper in saved.items():
            setattr(module, name, helper)


def statement_of(module, function, *args, **kwargs) -> tuple[str, object]:
    """Return the first (sql, params) that `function` sends, without sending it."""
    with recording(module) as first:
        # The recorder's None reply upsets the code after the query; the query is what we want.
        with contextlib.suppress(TypeError, APIError):
            function(*args, **kwargs)
        return first()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rentals", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="keep the server's data in this folder")
    options = parser.parse_args()
    folder = options.keep or Path(tempfile.mkdtemp(prefix="rentals-explain-"))
    server = EmbeddedPostgres(folder / "data")
    server.start()
    lines: list[str] = []
    try:
        if not server.execute("SELECT 1 FROM pg_database WHERE datname = 'explain'"):
            server.execute("CREATE DATABASE explain")
        url = server.dsn("explain")
        app = create_app(
            {
                "APP_ENV": "test",
                "DATABASE_URL": url,
                "SECRET_KEY": "explain-secret-key",
                "HEALTH_API_TOKEN": "explain-health-token",
                "LOG_LEVEL": "warning",
            }
        )
        with app.app_context():
            migrate.upgrade()
            if not database.execute_query_one("SELECT EXISTS (SELECT 1 FROM rentals) AS seeded")["seeded"]:
                result = seed.seed(100_000, 10_000, options.rentals, seed=1)
                lines.append(
                    f"seed: {result.customers} customers, {result.products} products, {result.rentals} rentals"
                    f" in {result.seconds:.1f} s"
                )
        database.close_pool(app)
        conn = psycopg2.connect(url)
        conn.autocommit = True
        cur = conn.cursor()

        def explain(title: str, sql: str, params: object, *, write: bool = False) -> None:
            text = cur.mogrify(sql, params).decode()
            if write:
                cur.execute("BEGIN")
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + text)
            plan = "\n".join(row[0] for row in cur.fetchall())
            best = None
            if write:
                cur.execute("ROLLBACK")
            else:
                timings = []
                for _ in range(5):
                    started = time.perf_counter()
                    cur.execute(text)
                    cur.fetchall()
                    timings.append((time.perf_counter() - started) * 1000)
                best = min(timings)
            timing = f"  (round trip, best of 5: {best:.2f} ms)" if best is not None else ""
            lines.append(f"\n=== {title}{timing}\n{plan}")
            print(f"{title}: {timing.strip() or 'explained'}", flush=True)

        today = datetime.date.today()
        two_years_ago = today - datetime.timedelta(days=730)
        cur.execute("SELECT id, start_date FROM rentals ORDER BY start_date DESC, id DESC OFFSET 500000 LIMIT 1")
        middle_id, middle_start = cur.fetchone() or (1, today)
        cur.execute("SELECT id FROM products WHERE active ORDER BY id LIMIT 1")
        product_id = cur.fetchone()[0]
        cur.execute("SELECT max(end_date) FROM rentals WHERE product_id = %s", (product_id,))
        free_day = cur.fetchone()[0] + datetime.timedelta(days=3)
        cur.execute("SELECT id FROM rentals WHERE status = 'reserved' ORDER BY id DESC LIMIT 1")
        reserved_id = cur.fetchone()[0]
        base = {
            "status": None,
            "customer_id": None,
            "product_id": None,
            "overlap_from": None,
            "overlap_to": None,
            "limit": 50,
            "cursor": None,
        }
        week = {"overlap_from": two_years_ago, "overlap_to": two_years_ago + datetime.timedelta(days=7)}
        product_filters = {"q": None, "category": None, "active": None, "available_from": None, "available_to": None}
        cases = [
            ("customer detail", customers, customers.get_customer, (54321,), {}),
            ("customers list, first page", customers, customers.list_customers, (None, 50, None), {}),
            (
                "customers list, after id 90000",
                customers,
                customers.list_customers,
                (None, 50, encode_cursor("customers", [90000])),
                {},
            ),
            ("customers search q=zhang4 (rare)", customers, customers.list_customers, ("zhang4", 50, None), {}),
            ("customers search q=smith (common)", customers, customers.list_customers, ("smith", 50, None), {}),
            (
                "products list, category and active",
                products,
                products.list_products,
                (),
                {**product_filters, "category": "drones", "active": True, "limit": 50, "cursor": None},
            ),
            (
                "products free next week",
                products,
                products.list_products,
                (),
                {
                    **product_filters,
                    "available_from": today + datetime.timedelta(days=7),
                    "available_to": today + datetime.timedelta(days=14),
                    "limit": 50,
                    "cursor": None,
                },
            ),
            ("rental detail", rentals, rentals.get_rental, (654321,), {}),
            ("rentals list, first page", rentals, rentals.list_rentals, (), base),
            (
                "rentals list, page at the 500,000th row",
                rentals,
                rentals.list_rentals,
                (),
                {**base, "cursor": encode_cursor("rentals", [middle_start, middle_id])},
            ),
            ("rentals list, customer_id", rentals, rentals.list_rentals, (), {**base, "customer_id": 4242}),
            ("rentals list, product_id", rentals, rentals.list_rentals, (), {**base, "product_id": 4242}),
            ("rentals list, status=active", rentals, rentals.list_rentals, (), {**base, "status": "active"}),
            (
                "rentals list, product_id and status=returned",
                rentals,
                rentals.list_rentals,
                (),
                {**base, "product_id": 77, "status": "returned"},
            ),
            ("rentals list, overlapping a week two years ago", rentals, rentals.list_rentals, (), {**base, **week}),
            (
                "rentals list, same week, last page (cursor below every match)",
                rentals,
                rentals.list_rentals,
                (),
                {
                    **base,
                    **week,
                    "cursor": encode_cursor("rentals", [two_years_ago - datetime.timedelta(days=60), 1]),
                },
            ),
            (
                "rentals list, from two years ago on",
                rentals,
                rentals.list_rentals,
                (),
                {**base, "overlap_from": two_years_ago},
            ),
            ("dashboard", dashboard, dashboard.get_dashboard, (), {}),
        ]
        for title, module, function, args, kwargs in cases:
            explain(title, *statement_of(module, function, *args, **kwargs))
        booking = statement_of(
            rentals, rentals.create_rental, 7, product_id, free_day, free_day + datetime.timedelta(days=2), None
        )
        explain("book a rental (rolled back)", *booking, write=True)
        explain(
            "activate a rental (rolled back)",
            *statement_of(rentals, rentals.transition_rental, reserved_id, "activate"),
            write=True,
        )
        conn.close()
        REPORT.write_text("\n".join(lines) + "\n")
        print(f"wrote {REPORT}")
    finally:
        if options.keep:
            server.stop()
        else:
            server.remove()
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
