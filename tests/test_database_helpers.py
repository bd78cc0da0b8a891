"""The only ways to run SQL: execute_query, execute_query_one, execute_write and transaction()."""

from __future__ import annotations

import contextlib
import logging
import time

import psycopg2
import psycopg2.errors
import pytest

from apps.api.app.models.database import (
    check_capacity,
    execute_query,
    execute_query_one,
    execute_write,
    get_pool,
    pool_stats,
    transaction,
)
from tests.helpers import own_backends, wait_until

pytestmark = pytest.mark.both_routes


@pytest.fixture
def items(admin_conn):
    """A small table with two rows, made outside the app."""
    with admin_conn.cursor() as cur:
        cur.execute("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE, price_cents int NOT NULL)")
        cur.execute("INSERT INTO items (name, price_cents) VALUES ('tent', 4500), ('stove', 1200)")
    return admin_conn


def item_names(admin_conn) -> list[str]:
    """Return the item names as another session sees them (committed rows only)."""
    with admin_conn.cursor() as cur:
        cur.execute("SELECT name FROM items ORDER BY id")
        return [row[0] for row in cur.fetchall()]


# -- reads --------------------------------------------------------------------------


def test_execute_query_returns_every_row_as_a_dict(app, items):
    with app.app_context():
        rows = execute_query("SELECT name, price_cents FROM items ORDER BY id")
        assert rows == [{"name": "tent", "price_cents": 4500}, {"name": "stove", "price_cents": 1200}]
        assert execute_query("SELECT name FROM items WHERE price_cents > %s", (10_000,)) == []


def test_execute_query_binds_parameters_never_text(app, items):
    hostile = "tent' OR '1'='1"
    with app.app_context():
        assert execute_query("SELECT name FROM items WHERE name = %(name)s", {"name": hostile}) == []
        assert execute_query_one("SELECT %s AS echoed", (hostile,)) == {"echoed": hostile}


def test_execute_query_one_returns_a_dict_or_none(app, items):
    with app.app_context():
        assert execute_query_one("SELECT name FROM items WHERE price_cents = %s", (1200,)) == {"name": "stove"}
        assert execute_query_one("SELECT name FROM items WHERE price_cents = %s", (1,)) is None
        assert execute_query_one("SELECT name FROM items ORDER BY id") == {"name": "tent"}
    assert pool_stats(app)["in_use"] == 0


def test_failing_query_raises_and_gives_the_connection_back(app, items):
    with app.app_context():
        with pytest.raises(psycopg2.errors.UndefinedTable):
            execute_query("SELECT * FROM no_such_table")
        assert execute_query_one("SELECT count(*)::int AS n FROM items") == {"n": 2}
        stats = pool_stats()
    assert stats["in_use"] == 0
    assert stats["discarded"] == 0


# -- writes -------------------------------------------------------------------------


def test_execute_write_returns_the_row_count(app, items):
    with app.app_context():
        assert execute_write("UPDATE items SET price_cents = price_cents + 1") == 2
        assert execute_write("UPDATE items SET price_cents = 0 WHERE name = %s", ("canoe",)) == 0
        assert execute_write("INSERT INTO items (name, price_cents) VALUES (%s, %s)", ("canoe", 9900)) == 1
    assert item_names(items) == ["tent", "stove", "canoe"]


def test_execute_write_returns_the_returning_row(app, items):
    with app.app_context():
        row = execute_write("INSERT INTO items (name, price_cents) VALUES (%s, %s) RETURNING id, name", ("lamp", 800))
        assert row == {"id": 3, "name": "lamp"}
        assert execute_write("DELETE FROM items WHERE name = %s RETURNING id", ("nothing",)) is None


def test_execute_write_commits_at_once(app, items):
    with app.app_context():
        execute_write("DELETE FROM items WHERE name = 'tent'")
    assert item_names(items) == ["stove"]


def test_execute_write_violation_raises_and_writes_nothing(app, items):
    with app.app_context(), pytest.raises(psycopg2.errors.UniqueViolation):
        execute_write("INSERT INTO items (name, price_cents) VALUES ('tent', 1)")
    assert item_names(items) == ["tent", "stove"]
    assert pool_stats(app)["in_use"] == 0


# -- transaction() --------------------------------------------------------------------


def test_transaction_commits_on_success(app, items):
    with app.app_context():
        with transaction() as cur:
            cur.execute("INSERT INTO items (name, price_cents) VALUES ('kayak', 15000)")
            cur.execute("UPDATE items SET price_cents = 0 WHERE name = 'tent'")
            # Uncommitted work is invisible to other sessions until the block ends.
            assert item_names(items) == ["tent", "stove"]
        assert execute_query_one("SELECT price_cents FROM items WHERE name = 'tent'") == {"price_cents": 0}
    assert item_names(items) == ["tent", "stove", "kayak"]
    assert pool_stats(app)["in_use"] == 0


class Boom(Exception):
    """An application error raised inside a transaction."""


def test_transaction_rolls_back_on_an_application_error(app, items):
    with app.app_context(), pytest.raises(Boom), transaction() as cur:
        cur.execute("INSERT INTO items (name, price_cents) VALUES ('kayak', 15000)")
        cur.execute("DELETE FROM items WHERE name = 'tent'")
        raise Boom
    assert item_names(items) == ["tent", "stove"]
    stats = pool_stats(app)
    assert stats["in_use"] == 0
    assert stats["discarded"] == 0


def test_transaction_rolls_back_on_a_database_error(app, items):
    with app.app_context(), pytest.raises(psycopg2.errors.UniqueViolation), transaction() as cur:
        cur.execute("INSERT INTO items (name, price_cents) VALUES ('kayak', 15000)")
        cur.execute("INSERT INTO items (name, price_cents) VALUES ('tent', 1)")
    assert item_names(items) == ["tent", "stove"]
    assert pool_stats(app)["in_use"] == 0


def test_connection_is_clean_after_a_rolled_back_transaction(app, items):
    with app.app_context():
        with pytest.raises(Boom), transaction() as cur:
            cur.execute("SET LOCAL statement_timeout = 1")
            raise Boom
        # Same connection (single thread, one idle): its own settings again, back in autocommit.
        assert execute_query_one("SELECT current_setting('statement_timeout') AS st")["st"] != "1ms"
        execute_write("DELETE FROM items WHERE name = 'tent'")
    assert item_names(items) == ["stove"]
    assert pool_stats(app)["connections_opened"] == 1


def test_transaction_does_not_report_success_when_an_error_inside_was_swallowed(app, items):
    # PostgreSQL answers COMMIT of a failed transaction with a silent ROLLBACK; a caller that
    # caught a database error inside the block must not be told its work was committed.
    with app.app_context(), pytest.raises(psycopg2.Error), transaction() as cur:
        cur.execute("INSERT INTO items (name, price_cents) VALUES ('kayak', 15000)")
        with contextlib.suppress(psycopg2.errors.UniqueViolation):
            cur.execute("INSERT INTO items (name, price_cents) VALUES ('tent', 1)")
    assert item_names(items) == ["tent", "stove"]
    assert pool_stats(app)["in_use"] == 0


# -- bounded work -------------------------------------------------------------------------


def test_helpers_inside_a_transaction_join_it_and_roll_back_with_it(app, items):
    with app.app_context():
        pool = get_pool()
        with pytest.raises(RuntimeError), transaction():
            execute_write("INSERT INTO items (name, price_cents) VALUES ('lamp', 900)")
            assert execute_query_one("SELECT count(*) AS n FROM items")["n"] == 3, "the block's row is not seen"
            assert pool.stats()["in_use"] == 1, "the helper borrowed a connection of its own"
            raise RuntimeError("undo it all")
    assert item_names(items) == ["tent", "stove"]


def test_a_failing_statement_inside_a_transaction_is_undone_alone(app, items):
    with app.app_context(), transaction():
        execute_write("INSERT INTO items (name, price_cents) VALUES ('lamp', 900)")
        with pytest.raises(psycopg2.errors.UniqueViolation):
            execute_write("INSERT INTO items (name, price_cents) VALUES ('tent', 1)")
        # As outside a transaction, code that caught the error goes on.
        assert execute_query("SELECT name FROM items WHERE name = 'lamp'") == [{"name": "lamp"}]
    assert item_names(items) == ["tent", "stove", "lamp"]


def test_a_nested_transaction_is_a_savepoint(app, items):
    with app.app_context():
        with transaction():
            execute_write("INSERT INTO items (name, price_cents) VALUES ('lamp', 900)")
            with pytest.raises(RuntimeError), transaction():
                execute_write("INSERT INTO items (name, price_cents) VALUES ('rope', 300)")
                raise RuntimeError("undo the inner block only")
            with transaction():
                execute_write("INSERT INTO items (name, price_cents) VALUES ('map', 100)")
        assert get_pool().stats()["in_use"] == 0
    assert item_names(items) == ["tent", "stove", "lamp", "map"]


@pytest.mark.direct_only(reason="per-app timeouts: behind PgBouncer one set travels on the role")
def test_statement_timeout_cancels_a_slow_query_and_keeps_the_connection(make_app):
    app = make_app(DB_STATEMENT_TIMEOUT_MS=200)
    with app.app_context():
        before = execute_query_one("SELECT pg_backend_pid() AS pid")["pid"]
        started = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            execute_query("SELECT pg_sleep(2)")
        assert time.monotonic() - started < 1.5
        after = execute_query_one("SELECT pg_backend_pid() AS pid")["pid"]
        stats = pool_stats()
    assert after == before, "a cancelled query cost its connection"
    assert stats["discarded"] == 0
    assert stats["in_use"] == 0


@pytest.mark.direct_only(reason="per-app timeouts: behind PgBouncer one set travels on the role")
def test_statement_timeout_inside_a_transaction_rolls_back_and_keeps_the_connection(make_app, items):
    app = make_app(DB_STATEMENT_TIMEOUT_MS=200)
    with app.app_context():
        with pytest.raises(psycopg2.errors.QueryCanceled), transaction() as cur:
            cur.execute("INSERT INTO items (name, price_cents) VALUES ('kayak', 15000)")
            cur.execute("SELECT pg_sleep(2)")
        assert execute_query_one("SELECT 1 AS ok") == {"ok": 1}
    assert item_names(items) == ["tent", "stove"]
    assert pool_stats(app)["discarded"] == 0


@pytest.mark.direct_only(reason="per-app timeouts: behind PgBouncer one set travels on the role")
def test_slow_query_answers_503_query_timeout(make_app):
    app = make_app(DB_STATEMENT_TIMEOUT_MS=200, DB_RETRY_AFTER=3)

    @app.get("/_test/slow")
    def slow():
        return {"rows": execute_query("SELECT pg_sleep(2)")}

    client = app.test_client()
    response = client.get("/_test/slow")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "3"
    assert set(response.json["error"]) == {"code", "message", "details"}
    assert response.json["error"]["code"] == "query_timeout"
    with app.app_context():
        assert execute_query_one("SELECT 1 AS ok") == {"ok": 1}
    assert pool_stats(app)["discarded"] == 0


@pytest.mark.direct_only(reason="per-app timeouts: behind PgBouncer one set travels on the role")
def test_lock_wait_past_lock_timeout_answers_503_query_timeout(make_app, items, database_url):
    app = make_app(DB_LOCK_TIMEOUT_MS=200)

    @app.post("/_test/rename")
    def rename():
        return {"updated": execute_write("UPDATE items SET name = 'tarp' WHERE name = 'tent'")}

    locker = psycopg2.connect(database_url)
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        response = app.test_client().post("/_test/rename")
    finally:
        locker.rollback()
        locker.close()
    assert response.status_code == 503
    assert response.json["error"]["code"] == "query_timeout"
    assert app.test_client().post("/_test/rename").json == {"updated": 1}


# -- null mode and stats --------------------------------------------------------------------


@pytest.mark.direct_only(reason="counts the app's backends on the server")
def test_null_mode_opens_and_closes_a_connection_for_each_use(make_app, admin_conn):
    app = make_app(DB_POOL_MODE="null")
    with app.app_context():
        pids = {execute_query_one("SELECT pg_backend_pid() AS pid")["pid"] for _ in range(3)}
        execute_write("SELECT 1")
        with transaction() as cur:
            cur.execute("SELECT 1")
        stats = pool_stats()
    assert len(pids) == 3
    assert stats["mode"] == "null"
    assert stats["connections_opened"] == 5
    assert stats["available"] == 0
    assert stats["in_use"] == 0
    assert stats["total"] == 0
    assert wait_until(lambda: own_backends(admin_conn) == 0)


def test_null_mode_reports_the_same_stats_keys_as_pool_mode(make_app):
    pooled, null = make_app(), make_app(DB_POOL_MODE="null")
    for app in (pooled, null):
        with app.app_context():
            execute_query_one("SELECT 1")
    assert set(pool_stats(null)) == set(pool_stats(pooled))


def test_pool_stats_keys_are_the_same_before_first_use(make_app):
    app = make_app()
    before = pool_stats(app)
    with app.app_context():
        get_pool()
    after = pool_stats(app)
    assert set(before) == set(after), f"missing before first use: {sorted(set(after) - set(before))}"


# -- capacity -----------------------------------------------------------------------------


@pytest.mark.direct_only(reason="the budget against max_connections holds without a pooler")
def test_check_capacity_reports_a_fitting_configuration(make_app, caplog):
    app = make_app(WEB_CONCURRENCY=2, DB_POOL_MAX_CONNECTIONS=5)
    caplog.set_level(logging.WARNING)
    capacity = check_capacity(app)
    assert capacity["server_max_connections"] == 200
    assert capacity["configured_max_connections"] == 10
    assert capacity["fits"] is True
    assert not [r for r in caplog.records if "do not fit" in r.getMessage()]


@pytest.mark.direct_only(reason="the budget against max_connections holds without a pooler")
def test_check_capacity_warns_when_workers_times_pool_exceed_the_server(make_app, caplog):
    app = make_app(WEB_CONCURRENCY=50, DB_POOL_MAX_CONNECTIONS=5)
    caplog.set_level(logging.WARNING)
    capacity = check_capacity(app)
    assert capacity["configured_max_connections"] == 250
    assert capacity["fits"] is False
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("WEB_CONCURRENCY" in m and "DB_POOL_MAX_CONNECTIONS" in m for m in messages), messages
