"""Behind a pooler: no startup options, the timeouts on the role, and a start refused when they are missing.

The first tests run against PostgreSQL directly: a session that did not get the startup
options is what PgBouncer in transaction mode gives the app. The rest run through a real
PgBouncer: the timeouts enforced, nothing left in the server session the clients share,
gunicorn refusing to start without the timeouts, migrations.
"""

from __future__ import annotations

import os
import subprocess
import time

import psycopg2
import psycopg2.errors
import pytest

from apps.api.app import create_app, migrate
from apps.api.app.models import database
from apps.api.app.models.database import TimeoutsNotApplied, check_session_timeouts, execute_query_one
from devtools.embedded_pg import free_port
from tests.helpers import app_config, apply_role_timeouts, bearer, through
from tests.support.faults import locked
from tests.support.gunicorn import GUNICORN_COMMAND, ROOT, get_json, start_gunicorn, stop_gunicorn

# The startup parameters PgBouncer 1.18 tracks per client and sets on the server connection itself.
PGBOUNCER_TRACKED = ("client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name")
TIMEOUTS = {"DB_STATEMENT_TIMEOUT_MS": 15000, "DB_LOCK_TIMEOUT_MS": 5000, "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": 30000}


def test_without_a_pooler_the_timeouts_arrive_with_the_connection(make_app, app_role_url):
    app = make_app(DATABASE_URL=app_role_url, **TIMEOUTS)
    assert check_session_timeouts(app) == {
        "statement_timeout": 15000,
        "lock_timeout": 5000,
        "idle_in_transaction_session_timeout": 30000,
    }


def test_pooler_mode_sends_no_startup_options_and_refuses_sessions_without_the_timeouts(make_app, app_role_url):
    app = make_app(DATABASE_URL=app_role_url, DB_POOLER="pgbouncer", **TIMEOUTS)
    with pytest.raises(TimeoutsNotApplied) as caught:
        check_session_timeouts(app)
    message = str(caught.value)
    for name, setting in (("statement_timeout", "DB_STATEMENT_TIMEOUT_MS"), ("lock_timeout", "DB_LOCK_TIMEOUT_MS")):
        assert f"{name} is 0 ms but {setting} asks for" in message
    assert "flask --app apps.api.wsgi db apply-timeouts" in message
    assert message.endswith(".")


def test_apply_timeouts_puts_them_on_the_role_for_new_sessions(make_app, app_role_url, admin_conn):
    app = make_app(DATABASE_URL=app_role_url, DB_POOLER="pgbouncer", **TIMEOUTS)
    result = app.test_cli_runner().invoke(args=["db", "apply-timeouts"])
    assert result.exit_code == 0, result.output
    assert "statement_timeout = 15000 ms" in result.output
    database.close_pool(app)  # the sessions opened before keep their values
    assert check_session_timeouts(make_app(DATABASE_URL=app_role_url, DB_POOLER="pgbouncer", **TIMEOUTS))
    # On this role in this database only: the superuser's sessions are untouched.
    with admin_conn.cursor() as cur:
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone()[0] == "0"


@pytest.mark.slow
def test_gunicorn_refuses_to_start_when_the_sessions_lack_the_timeouts(app_role_url):
    env = {**os.environ, **app_config(app_role_url, PORT=free_port(), DB_POOLER="pgbouncer", GUNICORN_THREADS=4)}
    result = subprocess.run(GUNICORN_COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, timeout=45)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "refusing to start: the server's sessions do not run with the configured timeouts" in output
    assert "Worker failed to boot" in output


# -- through a real PgBouncer in transaction mode -------------------------------------------


@pytest.mark.pgbouncer
def test_the_timeouts_on_the_role_are_enforced_through_pgbouncer(make_app, direct_database_url, make_pgbouncer):
    apply_role_timeouts(direct_database_url, statement_timeout=1000, lock_timeout=200)
    bouncer = make_pgbouncer()
    app = make_app(
        DATABASE_URL=through(bouncer, direct_database_url),
        DB_POOLER="pgbouncer",
        DB_STATEMENT_TIMEOUT_MS=1000,
        DB_LOCK_TIMEOUT_MS=200,
    )
    assert check_session_timeouts(app)["lock_timeout"] == 200
    with app.app_context():
        started = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            execute_query_one("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 3
        with locked(direct_database_url, "customers"):
            started = time.monotonic()
            with pytest.raises(psycopg2.errors.LockNotAvailable):
                execute_query_one("SELECT count(*) FROM customers")
            assert time.monotonic() - started < 3
        assert execute_query_one("SELECT 1 AS one") == {"one": 1}  # the connection serves on


@pytest.mark.pgbouncer
def test_nothing_the_app_does_is_left_in_the_server_session_it_shares(
    make_app, direct_database_url, make_pgbouncer, make_user, make_customer, make_product
):
    # One server connection for every client: whatever a client left in the session, the
    # next one would find.
    apply_role_timeouts(direct_database_url)
    bouncer = make_pgbouncer(default_pool_size=1)
    url = through(bouncer, direct_database_url)
    # A budget shorter than the statement timeout folds SET LOCAL into every statement.
    app = make_app(DATABASE_URL=url, DB_POOLER="pgbouncer", DB_REQUEST_BUDGET_MS=10_000)
    user, customer, product = make_user("staff"), make_customer(), make_product()
    client, headers = app.test_client(), {**bearer(app, user), "Idempotency-Key": "shared-session"}
    booking = {
        "customer_id": customer["id"],
        "product_id": product["id"],
        "start_date": "2030-03-01",
        "end_date": "2030-03-04",
    }
    assert client.post("/api/rentals", json=booking, headers=headers).status_code == 201
    assert client.post("/api/rentals", json=booking, headers=headers).headers["Idempotent-Replayed"] == "true"
    assert client.get(f"/api/customers/{customer['id']}", headers=headers).status_code == 200
    assert client.post("/api/auth/login", json={"email": user["email"], "password": "wrong"}).status_code == 401
    with app.app_context():
        app_backend = execute_query_one("SELECT pg_backend_pid() AS pid")["pid"]
        migrate.upgrade()
    with psycopg2.connect(url) as other, other.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone()[0] == app_backend, "the check must run on the server connection the app used"
        # PgBouncer itself sets the parameters it tracks per client (application_name among them).
        cur.execute(
            "SELECT name, setting FROM pg_settings WHERE source = 'session' AND name <> ALL(%s)",
            (list(PGBOUNCER_TRACKED),),
        )
        assert cur.fetchall() == [], "a setting the app made outlived its transaction"
        cur.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'")
        assert cur.fetchone()[0] == 0, "an advisory lock outlived its transaction"
    other.close()


@pytest.mark.pgbouncer
@pytest.mark.slow
def test_gunicorn_behind_pgbouncer_refuses_to_start_without_the_role_timeouts_and_serves_with_them(
    direct_database_url, make_pgbouncer
):
    bouncer = make_pgbouncer()
    settings = app_config(
        through(bouncer, direct_database_url), PORT=free_port(), DB_POOLER="pgbouncer", GUNICORN_THREADS=4
    )
    result = subprocess.run(
        GUNICORN_COMMAND, cwd=ROOT, env={**os.environ, **settings}, capture_output=True, text=True, timeout=45
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "statement_timeout is 0 ms but DB_STATEMENT_TIMEOUT_MS asks for 15000" in output
    apply_role_timeouts(direct_database_url)
    bouncer.admin("RECONNECT")
    process, port = start_gunicorn(through(bouncer, direct_database_url), DB_POOLER="pgbouncer")
    try:
        status, body = get_json(port, "/api/health/db/test")
    finally:
        stop_gunicorn(process)
    assert (status, body["test_result"]["test"]) == (200, 1)


@pytest.mark.pgbouncer
def test_migrations_apply_through_pgbouncer(make_database, make_pgbouncer):
    url = make_database()
    bouncer = make_pgbouncer()
    apply_role_timeouts(url)
    app = create_app(app_config(through(bouncer, url), DB_POOLER="pgbouncer"))
    try:
        result = app.test_cli_runner().invoke(args=["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("applied migrations: 0001")
        again = app.test_cli_runner().invoke(args=["db", "upgrade"])
        assert again.output.strip() == "database is up to date"
    finally:
        database.close_pool(app)


@pytest.mark.pgbouncer
def test_a_request_queued_at_pgbouncer_is_cut_off_at_its_budget_not_pgbouncers_wait(
    make_app, direct_database_url, make_pgbouncer, make_user, make_customer
):
    # PgBouncer would keep the query queued for its query_wait_timeout (120 s); the server's
    # timeouts cannot see it. The pool cuts the connection off once the request's budget is
    # spent, and the request answers 503.
    apply_role_timeouts(direct_database_url)
    bouncer = make_pgbouncer(default_pool_size=1)
    app = make_app(
        DATABASE_URL=through(bouncer, direct_database_url),
        DB_POOLER="pgbouncer",
        DB_REQUEST_BUDGET_MS=600,
        DB_POOL_LEAK_THRESHOLD=1,  # the maintenance thread ticks every quarter of it
    )
    headers, customer = bearer(app, make_user("staff")), make_customer()
    client = app.test_client()
    assert client.get(f"/api/customers/{customer['id']}", headers=headers).status_code == 200
    holder = psycopg2.connect(through(bouncer, direct_database_url), connect_timeout=5)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1")  # holds the only server connection, in a transaction
        started = time.monotonic()
        r = client.get(f"/api/customers/{customer['id']}", headers=headers)
        waited = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert r.status_code == 503, r.json
    assert r.json["error"]["code"] in ("database_unavailable", "database_budget_exhausted")
    assert r.headers["Retry-After"] == "2"
    assert waited < 3, f"the request waited {waited:.1f} s at PgBouncer"
    assert client.get(f"/api/customers/{customer['id']}", headers=headers).status_code == 200
    stats = app.test_client().get("/api/health/db", headers={"Authorization": "Bearer test-health-token"}).json
    assert stats["pool_stats"]["interrupted"] == 1
    assert any("cut off while held past" in a for a in stats["recommendations"]["advice"])
