"""Seeding: deterministic, realistic, consistent with every constraint, and the demo set for make run."""

from __future__ import annotations

import datetime
import hashlib

import pytest

from apps.api.app import seed

TODAY = datetime.date(2030, 6, 15)


def fingerprint(conn) -> str:
    """Return a digest of every seeded row (the ones whose values do not depend on the clock)."""
    digest = hashlib.sha256()
    with conn.cursor() as cur:
        for table in ("customers", "products", "rentals"):
            cur.execute(f"SELECT * FROM {table} ORDER BY id")
            for row in cur.fetchall():
                digest.update(repr(row).encode())
    return digest.hexdigest()


def scalar(conn, sql: str, params: tuple = ()) -> object:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def test_same_seed_gives_the_same_rows_and_another_seed_others(app, admin_conn):
    with app.app_context():
        seed.seed(100, 20, 1000, seed=1, today=TODAY)
        first = fingerprint(admin_conn)
        seed.seed(100, 20, 1000, seed=1, today=TODAY, truncate=True)
        assert fingerprint(admin_conn) == first
        seed.seed(100, 20, 1000, seed=2, today=TODAY, truncate=True)
        assert fingerprint(admin_conn) != first


def test_seeded_rows_are_realistic_and_consistent(app, admin_conn):
    with app.app_context():
        result = seed.seed(500, 50, 5000, seed=3, today=TODAY)
    assert (result.customers, result.products, result.rentals) == (500, 50, 5000)
    assert scalar(admin_conn, "SELECT count(*) FROM rentals") == 5000
    statuses = dict(
        (status, n)
        for status, n in _rows(admin_conn, "SELECT status, count(*) FROM rentals GROUP BY status ORDER BY 1")
    )
    assert set(statuses) == {"reserved", "active", "returned", "cancelled"}
    assert statuses["returned"] > statuses["cancelled"] > 0
    # Past and future, overdue included; reservations only ahead or starting today.
    assert scalar(admin_conn, "SELECT count(*) FROM rentals WHERE end_date <= %s", (TODAY,)) > 4000
    assert scalar(admin_conn, "SELECT count(*) FROM rentals WHERE start_date > %s", (TODAY,)) > 200
    assert scalar(admin_conn, "SELECT count(*) FROM rentals WHERE status = 'active' AND end_date < %s", (TODAY,)) > 0
    assert (
        scalar(admin_conn, "SELECT count(*) FROM rentals WHERE status = 'reserved' AND start_date < %s", (TODAY,)) == 0
    )
    # Money is fixed at booking, from the product's rate.
    assert (
        scalar(
            admin_conn,
            "SELECT count(*) FROM rentals r JOIN products p ON p.id = r.product_id"
            " WHERE r.daily_rate_cents <> p.daily_rate_cents"
            " OR r.total_cents <> r.daily_rate_cents * (r.end_date - r.start_date)",
        )
        == 0
    )
    assert scalar(admin_conn, "SELECT count(DISTINCT category) FROM products") > 5
    assert scalar(admin_conn, "SELECT count(*) FROM customers WHERE email IS NOT NULL") > 300
    # The constraints and indexes set aside during the load are all back.
    assert scalar(admin_conn, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'rentals'::regclass") >= 7
    assert scalar(admin_conn, "SELECT count(*) FROM pg_indexes WHERE tablename = 'rentals'") == 8
    assert scalar(admin_conn, "SELECT count(*) FROM pg_indexes WHERE tablename = 'customers'") == 4


def _rows(conn, sql: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_api_keeps_working_after_a_seed(app, client, staff_headers):
    with app.app_context():
        seed.seed(30, 5, 100, seed=4, today=TODAY)
    r = client.post("/api/customers", json={"full_name": "After Seed"}, headers=staff_headers)
    assert r.status_code == 201
    assert r.json["id"] == 31
    page = client.get("/api/rentals", query_string={"limit": 3}, headers=staff_headers).json
    assert len(page["items"]) == 3
    assert page["items"][0]["customer_name"]


def test_seed_refuses_a_database_that_holds_data(app, make_customer):
    make_customer()
    with app.app_context(), pytest.raises(seed.SeedError, match="already hold rows"):
        seed.seed(10, 2, 10)
    result = app.test_cli_runner().invoke(args=["db", "seed", "--customers", "10", "--products", "2", "--rentals", "5"])
    assert result.exit_code != 0
    assert "--truncate" in result.output


def test_seed_command(app, admin_conn):
    result = app.test_cli_runner().invoke(
        args=["db", "seed", "--customers", "40", "--products", "8", "--rentals", "300", "--seed", "9"]
    )
    assert result.exit_code == 0, result.output
    assert "seeded 40 customers, 8 products and 300 rentals" in result.output
    assert scalar(admin_conn, "SELECT count(*) FROM rentals") == 300


@pytest.mark.parametrize(("customers", "products", "rentals"), [(0, 1, 1), (1, 0, 1), (1, 1, -1)])
def test_seed_refuses_impossible_counts(app, customers, products, rentals):
    with app.app_context(), pytest.raises(seed.SeedError):
        seed.seed(customers, products, rentals)


def test_more_products_than_rentals(app, admin_conn):
    with app.app_context():
        seed.seed(5, 20, 7, today=TODAY)
    assert scalar(admin_conn, "SELECT count(*) FROM rentals") == 7


def test_demo_seed_runs_once_on_an_empty_database(app, client):
    with app.app_context():
        created = seed.seed_demo_if_empty()
        assert created is not None
        assert seed.seed_demo_if_empty() is None
    r = client.post("/api/auth/login", json=created)
    assert r.status_code == 200, r.json
    assert r.json["user"]["role"] == "admin"
    headers = {"Authorization": f"Bearer {r.json['token']}"}
    assert len(client.get("/api/customers", headers=headers).json["items"]) == 50
    assert client.get("/api/dashboard", headers=headers).json["rentals_by_status"]["returned"] > 0


def test_demo_seed_leaves_a_database_with_users_alone(app, admin_user):
    with app.app_context():
        assert seed.seed_demo_if_empty() is None
    result = app.test_cli_runner().invoke(args=["db", "demo"])
    assert "nothing seeded" in result.output
