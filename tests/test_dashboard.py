"""The dashboard: every figure equals a reference computed in Python from the seeded rows."""

from __future__ import annotations

import collections
import datetime
import time

import psycopg2
import pytest

from apps.api.app import seed
from apps.api.app.models import dashboard
from tests.helpers import bearer, wait_until
from tests.support.gunicorn import start_gunicorn, stop_gunicorn
from tests.support.load import Burst

pytestmark = pytest.mark.both_routes


def rows(conn, sql: str) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute(sql)
        names = [column.name for column in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def reference(conn) -> dict:
    """Compute the dashboard from the raw rows, the way docs/API.md defines each figure."""
    clock = rows(conn, "SELECT current_date AS today, now() AS now")[0]
    today, now = clock["today"], clock["now"]
    rentals = rows(conn, "SELECT product_id, start_date, end_date, status, total_cents FROM rentals")
    products = {p["id"]: p for p in rows(conn, "SELECT id, sku, name, active FROM products")}
    customers = rows(conn, "SELECT created_at FROM customers")
    month_start, window_start = today.replace(day=1), today - datetime.timedelta(days=29)
    earning = [r for r in rentals if r["status"] in ("active", "returned")]
    recent = [r for r in earning if window_start <= r["start_date"] <= today]
    by_product: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in recent:
        by_product[r["product_id"]][0] += r["total_cents"]
        by_product[r["product_id"]][1] += 1
    top = sorted(by_product.items(), key=lambda item: (-item[1][0], item[0]))[:10]
    booked = sum(
        max(0, (min(r["end_date"], today + datetime.timedelta(days=1)) - max(r["start_date"], window_start)).days)
        for r in earning
        if products[r["product_id"]]["active"]
    )
    available = 30 * sum(1 for p in products.values() if p["active"])
    return {
        "as_of": today.isoformat(),
        "rentals_by_status": {
            s: sum(1 for r in rentals if r["status"] == s) for s in ("reserved", "active", "returned", "cancelled")
        },
        "active_rentals": sum(1 for r in rentals if r["status"] == "active"),
        "overdue_rentals": sum(1 for r in rentals if r["status"] == "active" and r["end_date"] < today),
        "revenue_cents": {
            "current_month": sum(r["total_cents"] for r in earning if month_start <= r["start_date"] <= today),
            "last_30_days": sum(r["total_cents"] for r in recent),
        },
        "utilisation_last_30_days": {
            "booked_days": booked,
            "available_days": available,
            "ratio": round(booked / available, 4) if available else 0.0,
        },
        "top_products_last_30_days": [
            {
                "product_id": product_id,
                "sku": products[product_id]["sku"],
                "name": products[product_id]["name"],
                "revenue_cents": revenue,
                "rentals": count,
            }
            for product_id, (revenue, count) in top
        ],
        "new_customers_last_30_days": sum(1 for c in customers if c["created_at"] >= now - datetime.timedelta(days=30)),
    }


def without_generated_at(body: dict) -> dict:
    """Return the reply less generated_at and age_seconds (checked to be a recent time and its age)."""
    body = dict(body)
    generated = datetime.datetime.fromisoformat(body.pop("generated_at"))
    age = body.pop("age_seconds")
    assert abs((datetime.datetime.now(datetime.UTC) - generated).total_seconds()) < 60
    assert 0 <= age < 60
    return body


def refresh(app) -> None:
    """Recompute the snapshot now, as the refresh_dashboard job does."""
    with app.app_context():
        assert dashboard.refresh_snapshot()["refreshed"]


@pytest.fixture
def seeded(app, admin_conn):
    """A seeded database whose "today" is the database's own current date."""
    today = rows(admin_conn, "SELECT current_date AS today")[0]["today"]
    with app.app_context():
        seed.seed(customers=300, products=40, rentals=4000, seed=7, today=today)
    return today


def test_dashboard_matches_a_reference_computed_from_the_rows(client, staff_headers, seeded, admin_conn):
    r = client.get("/api/dashboard", headers=staff_headers)
    assert r.status_code == 200, r.json
    expected = reference(admin_conn)
    assert without_generated_at(r.json) == expected
    # The seeded data exercises every figure.
    assert all(expected["rentals_by_status"].values())
    assert expected["overdue_rentals"] > 0
    assert expected["revenue_cents"]["last_30_days"] > 0
    assert 0 < expected["utilisation_last_30_days"]["ratio"] <= 1
    assert len(expected["top_products_last_30_days"]) == 10
    assert expected["new_customers_last_30_days"] > 0


def test_dashboard_follows_new_activity(client, staff_headers, make_customer, make_product, admin_conn):
    today = rows(admin_conn, "SELECT current_date AS today")[0]["today"]
    customer, product = make_customer(), make_product(daily_rate_cents=1000)
    body = {
        "customer_id": customer["id"],
        "product_id": product["id"],
        "start_date": today.isoformat(),
        "end_date": (today + datetime.timedelta(days=3)).isoformat(),
    }
    rental = client.post("/api/rentals", json=body, headers=staff_headers).json
    client.post(f"/api/rentals/{rental['id']}/activate", headers=staff_headers)
    refresh(client.application)
    r = client.get("/api/dashboard", headers=staff_headers)
    assert without_generated_at(r.json) == reference(admin_conn)
    assert r.json["active_rentals"] == 1
    assert r.json["revenue_cents"]["last_30_days"] == 3000
    assert r.json["utilisation_last_30_days"] == {"booked_days": 1, "available_days": 30, "ratio": round(1 / 30, 4)}
    assert r.json["top_products_last_30_days"][0]["product_id"] == product["id"]


def test_dashboard_of_an_empty_database(client, staff_headers):
    r = client.get("/api/dashboard", headers=staff_headers)
    assert r.status_code == 200
    assert r.json["rentals_by_status"] == {"reserved": 0, "active": 0, "returned": 0, "cancelled": 0}
    assert r.json["top_products_last_30_days"] == []
    assert r.json["utilisation_last_30_days"] == {"booked_days": 0, "available_days": 0, "ratio": 0.0}
    assert r.json["revenue_cents"] == {"current_month": 0, "last_30_days": 0}


def test_a_reply_reads_the_snapshot_in_one_lookup_and_a_worker_reuses_it(client, staff_headers, monkeypatch):
    client.get("/api/auth/me", headers=staff_headers)  # the token's user is now cached
    refresh(client.application)
    calls = []
    real = dashboard.execute_query_one

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(dashboard, "execute_query_one", counted)
    assert client.get("/api/dashboard", headers=staff_headers).status_code == 200
    assert len(calls) == 1 and "FROM dashboard_snapshot WHERE id = 1" in calls[0]
    assert client.get("/api/dashboard", headers=staff_headers).status_code == 200
    assert len(calls) == 1, "a second reply within REREAD_SECONDS read the snapshot again"


def test_the_snapshot_changes_when_the_job_refreshes_it_and_replies_say_how_old(
    make_app, make_user, make_customer, monkeypatch
):
    monkeypatch.setattr(dashboard, "REREAD_SECONDS", 0.0)
    app = make_app()
    client = app.test_client()
    headers = bearer(app, make_user(role="staff"))
    first = client.get("/api/dashboard", headers=headers).json  # the first computes the snapshot
    make_customer()
    time.sleep(0.2)
    again = client.get("/api/dashboard", headers=headers).json
    assert again["generated_at"] == first["generated_at"], "a request recomputed a fresh snapshot"
    assert again["new_customers_last_30_days"] == first["new_customers_last_30_days"]
    assert again["age_seconds"] >= first["age_seconds"] + 0.2
    refresh(app)
    later = client.get("/api/dashboard", headers=headers).json
    assert later["new_customers_last_30_days"] == first["new_customers_last_30_days"] + 1
    assert later["generated_at"] > first["generated_at"] and later["age_seconds"] < again["age_seconds"]


def test_a_request_refreshes_a_snapshot_the_job_left_late(make_app, make_user, make_customer, admin_conn, monkeypatch):
    monkeypatch.setattr(dashboard, "REREAD_SECONDS", 0.0)
    app = make_app(DASHBOARD_REFRESH_SECONDS=0.1)
    client = app.test_client()
    headers = bearer(app, make_user(role="staff"))
    first = client.get("/api/dashboard", headers=headers).json
    make_customer()
    time.sleep(0.25)  # past LATE_PERIODS x DASHBOARD_REFRESH_SECONDS
    later = client.get("/api/dashboard", headers=headers).json
    assert later["new_customers_last_30_days"] == first["new_customers_last_30_days"] + 1
    assert rows(admin_conn, "SELECT refreshes FROM dashboard_snapshot")[0]["refreshes"] == 2


@pytest.mark.slow
def test_concurrent_first_requests_on_two_hosts_compute_the_snapshot_once(
    app, database_url, direct_database_url, route_settings, staff_headers, seeded, admin_conn
):
    hosts, bursts = [], []
    # While this transaction holds the customers table, a computation cannot finish, so
    # every first request is in flight at once, whatever the machine's speed.
    blocker = psycopg2.connect(direct_database_url)
    try:
        for _ in range(2):  # two hosts of two workers each, on one database
            hosts.append(start_gunicorn(database_url, WEB_CONCURRENCY=2, GUNICORN_THREADS=4, **route_settings))
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        request = ("GET", "/api/dashboard", staff_headers, None, "read")
        bursts = [Burst(port, [request] * 8) for _, port in hosts]
        # Four backends or more waiting: requests of every worker of both hosts have arrived.
        wait_until(lambda: waiting_backends(admin_conn) >= 4, timeout=4)
        time.sleep(0.3)
        blocker.rollback()
        replies = [reply for burst in bursts for reply in burst.result()]
    finally:
        blocker.close()
        logs = [stop_gunicorn(process) for process, _ in hosts]
    assert all(reply.status == 200 for reply in replies), [reply.body for reply in replies]
    assert len({reply.body["generated_at"] for reply in replies}) == 1, "the replies came from different computations"
    assert rows(admin_conn, "SELECT refreshes FROM dashboard_snapshot")[0]["refreshes"] == 1
    assert sum(log.count("dashboard snapshot computed") for log in logs) == 1


def waiting_backends(conn) -> int:
    """Return how many of the app's backends wait for a lock."""
    return rows(
        conn,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
    )[0]["n"]
