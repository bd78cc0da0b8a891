"""PgBouncer in /api/health/db and /metrics (PGBOUNCER_ADMIN_URL), against a real PgBouncer in transaction mode.

The figures of our pool (the database and user of DATABASE_URL) from PgBouncer's admin
console; clients waiting at the pooler turn the status to warning; an unreachable console
is reported while the endpoint still answers; the console's password reaches no reply and
no log line; /metrics exports the figures once per host, read by one worker at a time.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from urllib.parse import quote

import psutil
import psycopg2
import pytest

from apps.api.app.config import load_settings
from apps.api.app.metrics import POOLER_PROBE_LOCK
from apps.api.app.models.database import check_capacity
from apps.api.app.pgbouncer import PoolerUnreachable, read_figures
from devtools.embedded_pg import free_port
from tests.helpers import (
    HEALTH_HEADERS,
    app_config,
    apply_role_timeouts,
    dbname_of,
    metric_samples,
    through,
    undocumented_metric_families,
    wait_until,
)
from tests.support.gunicorn import get_json, start_gunicorn, stop_gunicorn, worker_pids

pytestmark = pytest.mark.pgbouncer


@pytest.fixture
def bouncer_app(make_app, make_pgbouncer, direct_database_url):
    """make(**PgBouncer options, app=dict of settings) -> (app, bouncer): the app on this test's database through a
    new PgBouncer, with DB_POOLER=pgbouncer and PGBOUNCER_ADMIN_URL (its console, unless app= overrides it)."""
    apply_role_timeouts(direct_database_url)

    def make(app: dict | None = None, **options: object):
        bouncer = make_pgbouncer(**options)
        settings = {
            "DATABASE_URL": through(bouncer, direct_database_url),
            "DB_POOLER": "pgbouncer",
            "PGBOUNCER_ADMIN_URL": bouncer.admin_dsn(),
            **(app or {}),
        }
        return make_app(**settings), bouncer

    return make


def test_health_db_reports_pgbouncers_figures_for_our_pool(bouncer_app, direct_database_url):
    app, bouncer = bouncer_app(default_pool_size=3, reserve_pool_size=1, max_client_conn=50)
    client = app.test_client()
    assert client.get("/api/health/db/test", headers=HEALTH_HEADERS).status_code == 200
    body = client.get("/api/health/db", headers=HEALTH_HEADERS).json
    assert body["status"] == "healthy", body["warnings"]
    pooler = body["pooler"]
    assert (pooler["monitored"], pooler["reachable"]) == (True, True)
    assert (pooler["database"], pooler["user"]) == (dbname_of(direct_database_url), "postgres")
    assert pooler["pool_mode"] == "transaction"
    assert pooler["pool"]["cl_active"] >= 1 and pooler["pool"]["cl_waiting"] == 0
    assert pooler["pool"]["sv_idle"] + pooler["pool"]["sv_used"] >= 1
    assert pooler["stats"]["total_query_count"] >= 1
    assert {"avg_wait_time_ms", "avg_query_time_ms", "avg_xact_time_ms", "avg_xact_count"} <= set(pooler["stats"])
    assert pooler["limits"] == {
        "pool_size": 3,
        "reserve_pool": 1,
        "max_client_conn": 50,
        "max_db_connections": 0,
        "query_wait_timeout_seconds": 120,
        "pools": 1,
        "databases": 1,
    }
    # 1 host x 2 workers x 5 connections against max_client_conn; (3 + 1) x 1 pool against 200 less 3.
    assert pooler["capacity"] == {
        "client_connections": 10,
        "max_client_conn": 50,
        "clients_fit": True,
        "pooler_server_connections": 4,
        "server_usable_connections": 197,
        "servers_fit": True,
        "fits": True,
    }
    assert pooler["admin_url"] == bouncer.admin_dsn().replace(quote(bouncer.admin_password, safe=""), "***")
    advice = body["recommendations"]["advice"]
    # PgBouncer's default query_wait_timeout (120 s) outlives the request's budget (30 s).
    assert any("query_wait_timeout (120 s)" in a and "at most 15 s" in a for a in advice), advice


def test_clients_waiting_at_pgbouncer_turn_the_status_to_warning(bouncer_app, direct_database_url):
    app, bouncer = bouncer_app(default_pool_size=1)
    client = app.test_client()
    check_capacity(app)  # what gunicorn's first worker does at start; it also opens the pool
    # Another client holds the pool's only server connection inside a transaction.
    holder = psycopg2.connect(through(bouncer, direct_database_url), connect_timeout=5)
    waiting: list[int] = []
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1")
        request = threading.Thread(
            target=lambda: waiting.append(client.get("/api/health/db/test", headers=HEALTH_HEADERS).status_code),
            daemon=True,
        )
        request.start()
        assert wait_until(lambda: bouncer.pools(dbname_of(direct_database_url))[0]["cl_waiting"] == 1)
        started = time.monotonic()
        body = app.test_client().get("/api/health/db", headers=HEALTH_HEADERS).json
        assert time.monotonic() - started < 3, "the health check waited at the pooler"
        assert waiting == [], "the request did not wait at PgBouncer"
    finally:
        holder.rollback()
        holder.close()
    request.join(10)
    assert waiting == [200]
    assert body["status"] == "warning"
    assert body["pooler"]["pool"]["cl_waiting"] == 1
    assert body["pooler"]["pool"]["maxwait_ms"] > 0
    assert any("1 clients wait at PgBouncer for a server connection" in w for w in body["warnings"]), body
    assert body["database"]["reachable"] is None and body["database"]["error"].startswith("not probed")
    # The server (200 less 3) has room for a pool larger than 1.
    assert any("raise default_pool_size" in a and "from 1 up to 197" in a for a in body["recommendations"]["advice"])


@pytest.mark.parametrize("console", ["refused", "wrong password"])
def test_an_unreachable_console_is_reported_and_the_endpoint_still_answers(bouncer_app, console):
    secret = "Wr0ng-Console-Passw0rd-4f9c"
    _, bouncer = bouncer_app()
    if console == "refused":
        url = f"postgresql://monitor:{secret}@127.0.0.1:{free_port()}/pgbouncer"
    else:
        url = f"postgresql://{bouncer.admin_user}:{secret}@{bouncer.host}:{bouncer.port}/pgbouncer"
    app, _ = bouncer_app(app={"PGBOUNCER_ADMIN_URL": url})
    response = app.test_client().get("/api/health/db", headers=HEALTH_HEADERS)
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "warning"
    assert body["database"]["reachable"] is True
    pooler = body["pooler"]
    assert (pooler["monitored"], pooler["reachable"]) == (True, False)
    assert pooler["error"].startswith("cannot connect to PgBouncer's admin console")
    assert any(w.startswith("PgBouncer's figures are unknown") for w in body["warnings"])
    assert any("its limits are unchecked" in a for a in body["recommendations"]["advice"])
    assert secret not in response.get_data(as_text=True)


def test_a_short_console_password_is_hidden_without_garbling_the_error():
    # The console's password is scrubbed from errors as user:password@, never letter by letter.
    url = f"postgresql://monitor:p@127.0.0.1:{free_port()}/pgbouncer"
    settings = load_settings(
        app_config("postgresql://u:pw@127.0.0.1/db", DB_POOLER="pgbouncer", PGBOUNCER_ADMIN_URL=url)
    )
    with pytest.raises(PoolerUnreachable) as caught:
        read_figures(settings)
    assert "port" in str(caught.value) and "Connection refused" in str(caught.value), caught.value


def test_behind_pgbouncer_without_the_console_the_advice_says_how_to_enable_it(bouncer_app):
    app, _ = bouncer_app(app={"PGBOUNCER_ADMIN_URL": ""})
    body = app.test_client().get("/api/health/db", headers=HEALTH_HEADERS).json
    assert body["status"] == "healthy"
    assert body["pooler"] == {"monitored": False}
    assert any(
        "limits (max_client_conn, default_pool_size) are unknown: set PGBOUNCER_ADMIN_URL" in a
        for a in body["recommendations"]["advice"]
    )


# -- under gunicorn: /metrics once per host, and the console's password in no log -------------


def metrics_text(port: int) -> str:
    """GET /metrics with the health token; return the exposition."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=HEALTH_HEADERS)
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


@pytest.mark.slow
def test_metrics_export_pgbouncers_figures_once_per_host_read_by_one_worker(
    make_pgbouncer, direct_database_url, tmp_path
):
    apply_role_timeouts(direct_database_url)
    bouncer = make_pgbouncer(default_pool_size=4, max_client_conn=60)
    folder = tmp_path / "metrics"
    folder.mkdir()
    process, port = start_gunicorn(
        through(bouncer, direct_database_url),
        DB_POOLER="pgbouncer",
        PGBOUNCER_ADMIN_URL=bouncer.admin_dsn(),
        PROMETHEUS_MULTIPROC_DIR=folder,
        LOG_LEVEL="debug",
    )
    replies = []
    try:
        pids = worker_pids(process)
        lock = folder / POOLER_PROBE_LOCK

        def one_reader_published() -> str | None:
            text = metrics_text(port)
            replies.append(text)
            return text if metric_samples(text, "rentals_pgbouncer_up") else None

        text = wait_until(one_reader_published, timeout=10, interval=0.2)
        assert text, "no worker published PgBouncer's figures"
        reader = int(lock.read_text())
        assert reader in pids
        labels = {"database": dbname_of(direct_database_url), "user": "postgres"}
        assert metric_samples(text, "rentals_pgbouncer_up") == [(labels, 1.0)]
        clients = {s[0]["state"]: s[1] for s in metric_samples(text, "rentals_pgbouncer_clients")}
        assert clients["active"] >= 2 and clients["waiting"] == 0  # each worker's pool keeps one open
        limits = {s[0]["setting"]: s[1] for s in metric_samples(text, "rentals_pgbouncer_limit")}
        assert (limits["pool_size"], limits["max_client_conn"]) == (4, 60)
        for family in ("rentals_pgbouncer_server_connections", "rentals_pgbouncer_average_seconds"):
            assert all("pid" not in sample_labels for sample_labels, _ in metric_samples(text, family))
        assert not undocumented_metric_families(text), undocumented_metric_families(text)
        status, body = get_json(port, "/api/health/db")
        replies.append(str(body))
        assert status == 200 and body["pooler"]["reachable"], body

        # The reader dies: another worker takes the host's lock and reads at its next tick.
        os.kill(reader, signal.SIGKILL)
        assert wait_until(lambda: lock.read_text().strip() not in ("", str(reader)), timeout=10), "no takeover"
        successor = int(lock.read_text())
        assert psutil.pid_exists(successor) and successor != reader
        # The dead reader's figures left with its file (child_exit); the successor's come at its first read.
        text = wait_until(one_reader_published, timeout=10, interval=0.2)
        assert metric_samples(text, "rentals_pgbouncer_up") == [(labels, 1.0)]
    finally:
        output = stop_gunicorn(process)
    # One reader at a time: the first worker to tick, then the one that took over.
    assert output.count("reads PgBouncer's figures for this host") == 2, output[-3000:]
    for text in [output, *replies]:
        assert bouncer.admin_password not in text
