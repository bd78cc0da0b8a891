"""The pool under pressure: blocking acquire, bounded waiting, healthy connections, sizing, leaks."""

from __future__ import annotations

import logging
import threading
import time

import psycopg2
import pytest
from flask import Flask

from apps.api.app import create_app
from apps.api.app.models.database import (
    DatabaseUnavailable,
    PoolTimeout,
    TooManyRequests,
    close_pool,
    execute_query,
    execute_query_one,
    execute_write,
    get_pool,
    pool_stats,
    transaction,
)
from tests.helpers import (
    AppThread,
    app_config,
    backend_pid,
    give_back,
    hold,
    own_backends,
    pool_of,
    private_server,
    wait_until,
)
from tests.support.faults import StallingProxy, terminate_backend

ERROR_KEYS = {"code", "message", "details"}


# -- blocking acquire ---------------------------------------------------------------


def test_exhausted_pool_waits_then_succeeds_when_a_connection_comes_back(make_app):
    app = make_app(DB_POOL_MAX_CONNECTIONS=2, DB_POOL_TIMEOUT=10)
    pool, held = hold(app, 2)
    waiter = AppThread(app, execute_query_one, "SELECT 42 AS answer")
    try:
        waiter.start()
        assert wait_until(lambda: pool.stats()["waiting"] == 1)
        time.sleep(0.1)
        assert waiter.is_alive(), "the request did not wait for a connection"
        pool.putconn(held.pop())
        waiter.join(5)
        assert not waiter.is_alive()
        assert waiter.error is None
        assert waiter.result == {"answer": 42}
    finally:
        give_back(pool, held)
        waiter.join(5)
    stats = pool.stats()
    assert stats["waits"] == 1
    assert stats["timeouts"] == 0
    assert stats["in_use"] == 0


def test_exhausted_pool_waits_then_times_out(make_app):
    app = make_app(DB_POOL_MAX_CONNECTIONS=2, DB_POOL_TIMEOUT=0.3)
    pool, held = hold(app, 2)
    try:
        started = time.monotonic()
        with app.app_context(), pytest.raises(PoolTimeout):
            execute_query_one("SELECT 1")
        waited = time.monotonic() - started
    finally:
        give_back(pool, held)
    assert 0.29 <= waited < 3
    stats = pool.stats()
    assert stats["timeouts"] == 1
    assert stats["waiting"] == 0
    assert stats["in_use"] == 0


@pytest.mark.parametrize("max_waiting", [0, 1, 3])
def test_requests_beyond_max_waiting_fail_at_once(make_app, max_waiting):
    app = make_app(DB_POOL_MAX_CONNECTIONS=1, DB_POOL_TIMEOUT=10, DB_POOL_MAX_WAITING=max_waiting)
    pool, held = hold(app, 1)
    waiters = [AppThread(app, execute_query_one, "SELECT 1 AS one") for _ in range(max_waiting)]
    try:
        for waiter in waiters:
            waiter.start()
        assert wait_until(lambda: pool.stats()["waiting"] == max_waiting)
        started = time.monotonic()
        with app.app_context(), pytest.raises(TooManyRequests):
            execute_query_one("SELECT 1")
        assert time.monotonic() - started < 1.0, "turned away only after waiting"
        assert pool.stats()["rejected"] == 1
    finally:
        give_back(pool, held)
        for waiter in waiters:
            waiter.join(10)
    # Everyone who was allowed to wait got served once the connection came back.
    assert [w.error for w in waiters] == [None] * max_waiting
    assert [w.result for w in waiters] == [{"one": 1}] * max_waiting
    assert pool.stats()["in_use"] == 0


@pytest.mark.parametrize(
    ("max_waiting", "code"),
    [(4, "database_timeout"), (0, "database_busy")],
)
def test_busy_pool_answers_503_with_retry_after(make_app, health_headers, max_waiting, code):
    app = make_app(DB_POOL_MAX_CONNECTIONS=2, DB_POOL_TIMEOUT=0.3, DB_POOL_MAX_WAITING=max_waiting, DB_RETRY_AFTER=7)
    pool, held = hold(app, 2)
    try:
        response = app.test_client().get("/api/health/db/test", headers=health_headers)
    finally:
        give_back(pool, held)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert set(response.json) == {"error"}
    assert set(response.json["error"]) == ERROR_KEYS
    assert response.json["error"]["code"] == code
    # Served again as soon as the connections come back.
    assert app.test_client().get("/api/health/db/test", headers=health_headers).status_code == 200


def test_route_holding_connections_makes_others_wait_then_time_out_with_503(make_app, health_headers):
    app = make_app(DB_POOL_MAX_CONNECTIONS=1, DB_POOL_TIMEOUT=0.3)
    holding = threading.Event()
    release = threading.Event()

    @app.get("/_test/hold")
    def hold_connection():
        with transaction() as cur:
            cur.execute("SELECT 1")
            holding.set()
            release.wait(10)
        return {"held": True}

    holder = threading.Thread(target=lambda: app.test_client().get("/_test/hold"), daemon=True)
    holder.start()
    try:
        assert holding.wait(5)
        assert pool_of(app).stats()["in_use"] == 1
        response = app.test_client().get("/api/health/db/test", headers=health_headers)
        assert response.status_code == 503
        assert response.json["error"]["code"] == "database_timeout"
        assert "Retry-After" in response.headers
    finally:
        release.set()
        holder.join(10)
    assert app.test_client().get("/api/health/db/test", headers=health_headers).status_code == 200


# -- healthy connections --------------------------------------------------------------


def test_killed_backend_is_discarded_and_the_next_read_succeeds(make_app, admin_conn):
    app = make_app()
    with app.app_context():
        killed = backend_pid()
        terminate_backend(admin_conn, killed)
        # The pool hands the dead connection out again; the read notices and retries once.
        assert backend_pid() != killed
        stats = pool_stats()
    assert stats["discarded"] == 1
    assert stats["in_use"] == 0


def test_killed_backend_does_not_fail_an_http_request(make_app, admin_conn, health_headers):
    app = make_app()
    client = app.test_client()
    assert client.get("/api/health/db/test", headers=health_headers).status_code == 200
    with app.app_context():
        terminate_backend(admin_conn, backend_pid())
    response = client.get("/api/health/db/test", headers=health_headers)
    assert response.status_code == 200, response.json
    assert pool_stats(app)["discarded"] == 1


def test_write_on_a_killed_backend_is_not_retried_and_raises_database_unavailable(make_app, admin_conn):
    admin_conn.cursor().execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
    app = make_app()
    with app.app_context():
        terminate_backend(admin_conn, backend_pid())
        with pytest.raises(DatabaseUnavailable):
            execute_write("INSERT INTO notes (body) VALUES ('lost')")
        assert execute_query("SELECT body FROM notes") == []
        assert execute_write("INSERT INTO notes (body) VALUES ('kept')") == 1
        assert execute_query("SELECT body FROM notes") == [{"body": "kept"}]
        assert pool_stats()["discarded"] == 1


def test_several_killed_backends_cost_one_retry_not_one_error_each(make_app, admin_conn):
    app = make_app(DB_POOL_MAX_CONNECTIONS=4)
    pool, held = hold(app, 4)
    pids = [conn.get_backend_pid() for conn in held]
    give_back(pool, held)
    for pid in pids:
        terminate_backend(admin_conn, pid)
    with app.app_context():
        # The first dead connection is discarded and retires its generation: the other
        # idle ones are closed at once, without a ping each.
        assert backend_pid() not in pids
        assert backend_pid() not in pids
        stats = pool_stats()
    assert (stats["discarded"], stats["retired"], stats["generations_retired"]) == (1, 3, 1)
    assert stats["ping_failures"] == 0
    assert stats["in_use"] == 0


def _restart_app(server) -> Flask:
    app = create_app(app_config(server.dsn(), DB_POOL_MAX_CONNECTIONS=3, DB_POOL_TIMEOUT=1))
    app.config["TESTING"] = True
    return app


@pytest.mark.slow
def test_first_read_after_a_server_restart_succeeds_without_restarting_the_app():
    with private_server() as server:
        app = _restart_app(server)
        try:
            pool, held = hold(app, 3)
            before = {conn.get_backend_pid() for conn in held}
            give_back(pool, held)
            server.stop()
            server.start()
            with app.app_context():
                # No request came while the server was down: the very first one must succeed.
                assert backend_pid() not in before
                assert get_pool() is pool
            assert pool.stats()["discarded"] >= 1
            assert pool.stats()["in_use"] == 0
        finally:
            close_pool(app)


@pytest.mark.slow
def test_server_down_answers_503_then_the_same_pool_recovers_when_it_returns(health_headers):
    with private_server() as server:
        app = _restart_app(server)
        client = app.test_client()
        try:
            pool, held = hold(app, 3)
            give_back(pool, held)
            server.stop()
            with app.app_context():
                for _ in range(3):
                    with pytest.raises(DatabaseUnavailable):
                        execute_query_one("SELECT 1")
                with pytest.raises(DatabaseUnavailable):
                    execute_write("SELECT 1")
                with pytest.raises(DatabaseUnavailable), transaction() as cur:
                    cur.execute("SELECT 1")
            for path in ("/api/health/db/test", "/api/health/db"):
                response = client.get(path, headers=health_headers)
                assert response.status_code == 503, (path, response.json)
                assert response.headers["Retry-After"] == "2"
            assert client.get("/api/health/db", headers=health_headers).json["status"] == "error"
            error = client.get("/api/health/db/test", headers=health_headers).json["error"]
            assert set(error) == ERROR_KEYS
            assert error["code"] == "database_unavailable"
            assert client.get("/api/health").status_code == 200
            assert pool.stats()["in_use"] == 0

            server.start()
            assert wait_until(
                lambda: client.get("/api/health/db/test", headers=health_headers).status_code == 200, timeout=10
            )
            assert pool_of(app) is pool
            assert client.get("/api/health/db", headers=health_headers).json["status"] == "healthy"
            assert pool.stats()["in_use"] == 0
        finally:
            close_pool(app)


@pytest.mark.slow
def test_idle_connections_of_a_stopped_server_are_dropped_then_refilled_without_traffic():
    # Nobody borrows a connection here: the pool alone must notice the server went away
    # (DB_POOL_KEEPALIVE_SECONDS) and come back to its minimum once the server returns.
    with private_server() as server:
        app = create_app(
            app_config(
                server.dsn(), DB_POOL_MIN_CONNECTIONS=4, DB_POOL_MAX_CONNECTIONS=4, DB_POOL_KEEPALIVE_SECONDS=0.2
            )
        )
        try:
            pool = pool_of(app)
            before = pool.stats()
            assert before["total"] == 4
            time.sleep(1.5)  # a few checks of healthy idle connections
            assert pool.stats()["discarded"] == 0, "a healthy idle connection was dropped"
            server.stop()
            assert wait_until(lambda: pool.stats()["total"] == 0, timeout=5), pool.stats()
            server.start()
            assert wait_until(lambda: pool.stats()["total"] == 4, timeout=10), pool.stats()
            after = pool.stats()
        finally:
            close_pool(app)
    assert after["acquisitions"] == before["acquisitions"], "a borrow happened: the test is not without traffic"
    assert after["discarded"] == 4
    assert after["connections_opened"] == 8


# -- lifetime, idle shrinking and sizing -------------------------------------------------


def test_connection_past_its_lifetime_is_recycled(make_app):
    app = make_app(DB_POOL_MAX_LIFETIME=0.3)
    with app.app_context():
        first = backend_pid()
        time.sleep(0.4)
        pids = {backend_pid() for _ in range(3)}
        stats = pool_stats()
    assert stats["recycled"] >= 1
    assert pids - {first}, "a connection older than DB_POOL_MAX_LIFETIME kept being used"


def test_idle_connections_shrink_down_to_min_connections(make_app, admin_conn):
    app = make_app(DB_POOL_MIN_CONNECTIONS=1, DB_POOL_MAX_CONNECTIONS=5, DB_POOL_IDLE_TIMEOUT=0.2)
    pool, held = hold(app, 5)
    give_back(pool, held)
    assert own_backends(admin_conn) == 5
    assert wait_until(lambda: pool.stats()["total"] == 1, timeout=5), pool.stats()
    assert wait_until(lambda: own_backends(admin_conn) == 1)
    time.sleep(0.5)
    stats = pool.stats()
    assert stats["total"] == 1, "shrank below DB_POOL_MIN_CONNECTIONS"
    assert stats["shrunk"] == 4


def test_idle_shrinking_spares_connections_in_steady_use(make_app):
    # Bursts every ~50 ms use 3 connections at once; between bursts they sit idle. Each idle
    # window is far shorter than DB_POOL_IDLE_TIMEOUT, so none of the 3 may be closed.
    app = make_app(DB_POOL_MIN_CONNECTIONS=1, DB_POOL_MAX_CONNECTIONS=5, DB_POOL_IDLE_TIMEOUT=0.2)
    burst = threading.Barrier(3)
    stop = threading.Event()

    def work():
        while not stop.is_set():
            try:
                burst.wait(5)
            except threading.BrokenBarrierError:
                if stop.is_set():  # another worker saw the stop first and left the burst
                    return
                raise
            with transaction() as cur:
                cur.execute("SELECT 1")
                time.sleep(0.01)
            time.sleep(0.04)

    workers = [AppThread(app, work) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.5)
    finally:
        stop.set()
        burst.abort()
        for worker in workers:
            worker.join(5)
    assert [w.error for w in workers] == [None] * 3
    stats = pool_stats(app)
    assert stats["connections_opened"] <= 4, f"connections in regular use were closed and reopened: {stats}"


def test_pool_refills_to_min_connections_in_the_background(make_app, admin_conn):
    app = make_app(DB_POOL_MIN_CONNECTIONS=3, DB_POOL_MAX_CONNECTIONS=5, DB_POOL_IDLE_TIMEOUT=0.2)
    pool = pool_of(app)
    assert pool.stats()["total"] == 3, "open() did not fill the pool to DB_POOL_MIN_CONNECTIONS"
    held = [pool.getconn() for _ in range(3)]
    for conn in held:
        terminate_backend(admin_conn, conn.get_backend_pid())
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
    give_back(pool, held)
    assert pool.stats()["discarded"] == 3
    assert wait_until(lambda: pool.stats()["total"] == 3), pool.stats()
    assert wait_until(lambda: own_backends(admin_conn) == 3)


def test_returned_connections_stay_open_up_to_max(make_app, admin_conn):
    # psycopg2's own pool closes every returned connection beyond minconn; ours must not.
    app = make_app(DB_POOL_MIN_CONNECTIONS=1, DB_POOL_MAX_CONNECTIONS=5)
    barrier = threading.Barrier(5)

    def use_together():
        with transaction() as cur:
            cur.execute("SELECT 1")
            barrier.wait(5)

    for _ in range(3):
        users = [AppThread(app, use_together) for _ in range(5)]
        for user in users:
            user.start()
        for user in users:
            user.join(10)
        assert [u.error for u in users] == [None] * 5
        stats = pool_stats(app)
        assert stats["connections_opened"] == 5
        assert stats["available"] == 5
        assert stats["in_use"] == 0
        assert own_backends(admin_conn) == 5


@pytest.mark.slow
def test_many_threads_never_exceed_max_and_leak_nothing(make_app, admin_conn):
    max_connections = 5
    app = make_app(DB_POOL_MAX_CONNECTIONS=max_connections, DB_POOL_TIMEOUT=30)
    pool = pool_of(app)
    done = threading.Event()
    samples: list[int] = []

    def sample():
        while not done.is_set():
            samples.append(own_backends(admin_conn))
            time.sleep(0.01)

    def run_queries():
        for i in range(200):
            assert execute_query_one("SELECT %s::int AS i", (i,)) == {"i": i}

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    workers = [AppThread(app, run_queries) for _ in range(50)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
    finally:
        done.set()
        sampler.join(5)
    assert [w.error for w in workers if w.error] == []
    stats = pool.stats()
    assert stats["acquisitions"] == 50 * 200
    assert stats["in_use"] == 0
    assert stats["peak_in_use"] <= max_connections
    assert stats["total"] <= max_connections
    assert stats["timeouts"] == stats["rejected"] == 0
    assert samples and max(samples) <= max_connections
    assert own_backends(admin_conn) <= max_connections


def test_connections_carry_the_configured_limits(make_app):
    app = make_app(DB_STATEMENT_TIMEOUT_MS=1234, DB_IDLE_IN_TRANSACTION_TIMEOUT_MS=4321, DB_LOCK_TIMEOUT_MS=567)
    with app.app_context():
        row = execute_query_one(
            "SELECT current_setting('statement_timeout') AS statement_timeout,"
            " current_setting('idle_in_transaction_session_timeout') AS idle_in_transaction,"
            " current_setting('lock_timeout') AS lock_timeout,"
            " current_setting('application_name') AS application_name"
        )
    assert row == {
        "statement_timeout": "1234ms",
        "idle_in_transaction": "4321ms",
        "lock_timeout": "567ms",
        "application_name": "rentals-api",
    }


def test_idle_in_transaction_timeout_ends_an_abandoned_transaction(make_app, admin_conn):
    app = make_app(DB_IDLE_IN_TRANSACTION_TIMEOUT_MS=200)
    pool, held = hold(app, 1)
    conn = held[0]
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        time.sleep(0.6)
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        give_back(pool, held)
    with app.app_context():
        assert execute_query_one("SELECT 1 AS one") == {"one": 1}
    assert pool.stats()["discarded"] == 1


# -- leak detection -----------------------------------------------------------------------


def test_connection_held_past_leak_threshold_is_logged_with_its_endpoint(make_app, caplog):
    app = make_app(DB_POOL_LEAK_THRESHOLD=0.1)

    @app.get("/_test/slow-holder")
    def slow_holder():
        with transaction() as cur:
            cur.execute("SELECT 1")
            time.sleep(0.5)
        return {"done": True}

    caplog.set_level(logging.WARNING)
    assert app.test_client().get("/_test/slow-holder").status_code == 200
    leaks = [r for r in caplog.records if "leak" in r.getMessage()]
    assert len(leaks) == 1, [r.getMessage() for r in caplog.records]
    assert leaks[0].levelno == logging.WARNING
    assert "/_test/slow-holder" in leaks[0].getMessage()
    assert "slow_holder" in leaks[0].getMessage()
    assert pool_stats(app)["leaks_detected"] == 1


def test_short_holds_are_not_reported_as_leaks(make_app, caplog):
    app = make_app(DB_POOL_LEAK_THRESHOLD=0.5)
    caplog.set_level(logging.WARNING)
    with app.app_context():
        for _ in range(20):
            execute_query_one("SELECT 1")
    time.sleep(0.3)
    assert pool_stats(app)["leaks_detected"] == 0
    assert not [r for r in caplog.records if "leak" in r.getMessage()]


# -- a server that stops answering ----------------------------------------------------------


@pytest.mark.slow
def test_a_connect_to_an_unresponsive_server_does_not_block_other_threads(make_app, postgresql):
    # One thread opening a connection that hangs (up to DB_CONNECT_TIMEOUT) must not stop the
    # others from giving back and borrowing the connections that are already open.
    info = postgresql.info
    proxy = StallingProxy(info.host, info.port)
    app = make_app(
        DATABASE_URL=f"postgresql://{info.user}:{info.password}@127.0.0.1:{proxy.port}/{info.dbname}",
        DB_POOL_MIN_CONNECTIONS=1,
        DB_POOL_MAX_CONNECTIONS=3,
        DB_CONNECT_TIMEOUT=2,
    )
    grower = None
    outcome: list[str] = []
    try:
        pool, held = hold(app, 1)
        proxy.stall.set()

        def grow():
            try:
                pool.putconn(pool.getconn())
            except DatabaseUnavailable:
                outcome.append("unreachable")
            else:
                outcome.append("connected")

        grower = threading.Thread(target=grow, daemon=True)
        grower.start()
        assert wait_until(lambda: proxy.stalled == 1)
        time.sleep(0.1)  # the grower is now inside connect()

        started = time.monotonic()
        pool.putconn(held.pop())
        gave_back_in = time.monotonic() - started
        started = time.monotonic()
        pool.putconn(pool.getconn())
        borrowed_in = time.monotonic() - started
    finally:
        proxy.close()
        if grower is not None:
            grower.join(5)
    assert outcome == ["unreachable"], "the connect did not hang; the test proves nothing"
    assert gave_back_in < 0.5, f"giving a connection back waited {gave_back_in:.1f} s for another thread's connect"
    assert borrowed_in < 0.5, f"borrowing an idle connection waited {borrowed_in:.1f} s for another thread's connect"


def test_a_connection_held_past_its_deadline_is_cut_off_and_discarded(make_app):
    app = make_app(DB_POOL_LEAK_THRESHOLD=0.4)  # the maintenance thread ticks every 0.1 s
    pool = pool_of(app)
    conn = pool.getconn(deadline=time.monotonic() + 0.3)
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
        cur.execute("SELECT pg_sleep(5)")  # no server timeout ends it; the deadline does
    assert time.monotonic() - started < 2.5
    pool.putconn(conn)
    stats = pool.stats()
    assert (stats["interrupted"], stats["discarded"], stats["in_use"]) == (1, 1, 0)
    with app.app_context():
        assert execute_query_one("SELECT 1 AS one") == {"one": 1}
