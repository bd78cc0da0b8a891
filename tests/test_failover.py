"""Failover of the primary: several hosts in DATABASE_URL, and a server that stops taking writes.

Making a server read-only (ALTER SYSTEM + reload) happens on a private one, never on the
session server the other tests share. The switchover and crash scenarios under load, with
a real replica, are in tests/test_failover_load.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from apps.api.app import create_app, pgbouncer
from apps.api.app.models.database import ServerReadOnly, check_capacity, close_pool, execute_write, pool_stats
from devtools.embedded_pg import EmbeddedPostgres, free_port
from tests.helpers import (
    HEALTH_HEADERS,
    app_config,
    bearer,
    dbname_of,
    give_back,
    hold,
    insert_row,
    private_server,
    upgrade_database,
    wait_until,
)
from tests.support.failover import temporary_pair
from tests.support.replicas import ReplicaPair

DBNAME = "rentals_failover"


@pytest.fixture(scope="module")
def own_server() -> Iterator[EmbeddedPostgres]:
    """A private server with the migrated database DBNAME; stopped and removed after the module."""
    with private_server() as server:
        server.execute(f"CREATE DATABASE {DBNAME}")
        upgrade_database(server.dsn(DBNAME))
        yield server


def set_read_only(server: EmbeddedPostgres, on: bool) -> None:
    """Make every session of the server read-only (or writable again), open ones included, as a demotion would."""
    server.execute("ALTER SYSTEM SET default_transaction_read_only = on" if on else "ALTER SYSTEM RESET ALL")
    server.execute("SELECT pg_reload_conf()")
    wanted = "on" if on else "off"
    assert wait_until(lambda: server.execute("SHOW default_transaction_read_only", dbname=DBNAME)[0][0] == wanted)


@pytest.fixture
def read_only_server(own_server: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    """The private server; writable again after the test whatever it did."""
    try:
        yield own_server
    finally:
        set_read_only(own_server, False)


@pytest.fixture
def failover_app(own_server: EmbeddedPostgres, password_hash: str):
    """An app on the private server with 4 connections, and the headers of a staff member."""
    conn = psycopg2.connect(own_server.dsn(DBNAME))
    conn.autocommit = True
    try:
        user = insert_row(
            conn,
            "users",
            email=f"staff-{uuid.uuid4().hex}@example.com",
            password_hash=password_hash,
            full_name="Test Staff",
            role="staff",
            active=True,
        )
    finally:
        conn.close()
    app = create_app(
        app_config(own_server.dsn(DBNAME), DB_POOL_MIN_CONNECTIONS=4, DB_POOL_MAX_CONNECTIONS=4, DB_POOL_TIMEOUT=1)
    )
    app.config["TESTING"] = True
    try:
        yield app, bearer(app, user)
    finally:
        close_pool(app)


def _new_customer(n: int) -> dict[str, str]:
    return {"full_name": f"Failover {n}", "email": f"failover{n}-{uuid.uuid4().hex}@example.com"}


@pytest.mark.slow
def test_a_primary_turned_read_only_retires_the_whole_generation_at_once(failover_app, read_only_server):
    app, headers = failover_app
    client = app.test_client()
    pool, held = hold(app, 4)
    give_back(pool, held)  # four idle connections, all opened while the server took writes
    before = pool.stats()
    set_read_only(read_only_server, True)

    replies = [client.post("/api/customers", json=_new_customer(n), headers=headers) for n in range(6)]

    assert [r.status_code for r in replies] == [503] * 6, [r.json for r in replies]
    assert all(r.headers["Retry-After"] for r in replies)
    assert replies[0].json["error"]["code"] == "database_read_only"
    stats = pool.stats()
    # One generation retired, its four connections closed together; no request met a
    # second read-only connection, and no connection to the read-only server was kept.
    assert stats["generations_retired"] - before["generations_retired"] == 1
    assert stats["retired"] - before["retired"] == 4
    assert stats["connections_opened"] == before["connections_opened"]
    assert stats["connection_errors"] > before["connection_errors"], "the pool did not try to reconnect"
    assert (stats["total"], stats["in_use"]) == (0, 0)

    set_read_only(read_only_server, False)
    # Back without a restart, on the same pool, once the backoff lets a connect through.
    assert wait_until(
        lambda: client.post("/api/customers", json=_new_customer(99), headers=headers).status_code == 201, timeout=10
    )
    assert pool.stats()["generations_retired"] - before["generations_retired"] == 1


@pytest.mark.slow
def test_health_reports_error_when_the_primary_is_read_only(failover_app, read_only_server):
    app, _ = failover_app
    client = app.test_client()
    assert client.get("/api/health/db", headers=HEALTH_HEADERS).json["status"] == "healthy"
    set_read_only(read_only_server, True)

    response = client.get("/api/health/db", headers=HEALTH_HEADERS)

    assert response.status_code == 503
    assert response.headers["Retry-After"]
    body = response.json
    assert body["status"] == "error"
    assert any("read-only" in warning for warning in body["warnings"]), body["warnings"]


def _several_hosts(url: str, first: str) -> str:
    """Return `url` with `first` (host:port) listed before its own host, asking libpq for a writable one."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:{parts.password}@{first},{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc, query="target_session_attrs=read-write"))


def test_an_app_on_several_hosts_checks_capacity_writes_and_reports_health_on_the_one_that_answers(
    direct_database_url, health_headers
):
    url = _several_hosts(direct_database_url, f"127.0.0.1:{free_port()}")  # nothing listens there
    app = create_app(app_config(url))
    try:
        capacity = check_capacity(app)
        assert capacity["server_max_connections"] > 0
        assert pgbouncer.our_pool(url) == (dbname_of(direct_database_url), urlsplit(direct_database_url).username)
        with app.app_context():
            assert execute_write("CREATE TABLE notes (body text)") is not None
            assert execute_write("INSERT INTO notes VALUES ('on the second host')") == 1
        body = app.test_client().get("/api/health/db", headers=health_headers).json
        assert (body["status"], body["database"]["writable"]) == ("healthy", True), body
    finally:
        close_pool(app)


@pytest.fixture(scope="module")
def standby_pair() -> Iterator[ReplicaPair]:
    """A primary and its streaming replica for this module; removed after."""
    with temporary_pair() as pair:
        yield pair


@pytest.mark.slow
def test_a_pool_that_reaches_a_standby_refuses_it_and_health_says_in_recovery(standby_pair, health_headers):
    # One host, no target_session_attrs: libpq connects to the standby, the pool refuses it.
    app = create_app(app_config(standby_pair.replica_url, DB_POOL_MIN_CONNECTIONS=0))
    app.config["TESTING"] = True
    try:
        with app.app_context(), pytest.raises(ServerReadOnly, match="in recovery"):
            execute_write("INSERT INTO customers (full_name, email) VALUES ('Lost', 'lost@example.com')")
        stats = pool_stats(app)
        assert (stats["connections_opened"], stats["total"]) == (0, 0)
        assert stats["connection_errors"] >= 1
        response = app.test_client().get("/api/health/db", headers=health_headers)
        assert response.status_code == 503
        assert response.json["database"]["writable"] is False
        assert any("in recovery" in warning for warning in response.json["warnings"]), response.json["warnings"]
    finally:
        close_pool(app)
