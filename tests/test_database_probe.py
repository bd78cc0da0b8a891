"""The host's database probe: rentals_database_up tells whether the database answers, traffic or not."""

from __future__ import annotations

import http.client
import os
import signal
from urllib.parse import urlsplit

import psutil
import pytest

from apps.api.app import create_app, probe
from apps.api.app.metrics import DATABASE_PROBE_LOCK, exposition
from apps.api.app.models.database import close_pool
from tests.helpers import (
    HEALTH_HEADERS,
    app_config,
    metric_samples,
    pool_of,
    private_server,
    through,
    wait_until,
)
from tests.support.faults import StallingProxy
from tests.support.gunicorn import start_gunicorn, stop_gunicorn, worker_pids


def probe_figures(name: str) -> dict[str, float]:
    """Return this process's samples of `name` by target."""
    text = exposition()[0].decode()
    return {labels["target"]: value for labels, value in metric_samples(text, name)}


@pytest.mark.slow
def test_database_up_goes_to_0_without_traffic_when_the_server_stops_and_back_to_1_when_it_returns():
    with private_server() as server:
        app = create_app(app_config(server.dsn(), DB_PROBE_INTERVAL_SECONDS=0.5))
        app.config["TESTING"] = True
        try:
            pool = pool_of(app)
            assert wait_until(lambda: probe_figures("rentals_database_up").get("primary") == 1, timeout=10)
            assert 0 < probe_figures("rentals_database_probe_seconds")["primary"] < 5
            server.stop()
            # No request: only the probe can tell.
            assert wait_until(lambda: probe_figures("rentals_database_up").get("primary") == 0, timeout=10)
            server.start()
            assert wait_until(lambda: probe_figures("rentals_database_up").get("primary") == 1, timeout=10)
            assert pool.stats()["acquisitions"] == 0, "a request reached the pool: the probe was not alone"
            results = app.test_client().get("/api/health/db", headers=HEALTH_HEADERS).json["probe"]
            assert results["primary"]["up"] is True, results
        finally:
            close_pool(app)


def test_a_probe_connects_runs_a_query_and_reports_its_time(direct_database_url):
    seconds = probe.probe(direct_database_url, timeout=5)
    assert 0 < seconds < 5


def test_a_refused_probe_names_the_reason_but_not_the_password(direct_database_url):
    parts = urlsplit(direct_database_url)
    wrong = parts._replace(netloc=f"{parts.username}:not-the-password-42@{parts.hostname}:{parts.port}").geturl()
    with pytest.raises(probe.TargetUnreachable) as refused:
        probe.probe(wrong, timeout=5)
    assert "password authentication failed" in str(refused.value)
    assert "not-the-password-42" not in str(refused.value)


def test_a_server_that_accepts_and_never_answers_fails_the_probe_at_its_deadline(postgresql):
    # libpq alone would wait up to connect_timeout for the login and forever for the query.
    info = postgresql.info
    proxy = StallingProxy(info.host, info.port)
    proxy.stall.set()
    try:
        with pytest.raises(probe.TargetUnreachable, match=r"no answer within 0\.5 s"):
            probe.probe(f"postgresql://{info.user}:{info.password}@127.0.0.1:{proxy.port}/{info.dbname}", 0.5)
    finally:
        proxy.close()


@pytest.mark.pgbouncer
def test_through_pgbouncer_the_probe_answers_for_the_pooler_and_fails_when_it_stops(
    make_pgbouncer, direct_database_url
):
    bouncer = make_pgbouncer()
    url = through(bouncer, direct_database_url)
    assert probe.probe(url, timeout=5) > 0
    bouncer.stop()
    with pytest.raises(probe.TargetUnreachable):
        probe.probe(url, timeout=5)


def metrics_text(port: int) -> str:
    """GET /metrics of a gunicorn on loopback with the health token."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=HEALTH_HEADERS)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


@pytest.mark.slow
def test_one_worker_per_host_probes_and_a_killed_probers_value_leaves_with_it(direct_database_url, tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    process, port = start_gunicorn(direct_database_url, DB_PROBE_INTERVAL_SECONDS=1, PROMETHEUS_MULTIPROC_DIR=folder)
    try:
        pids = worker_pids(process)

        def one_series_up() -> bool:
            return metric_samples(metrics_text(port), "rentals_database_up") == [({"target": "primary"}, 1.0)]

        assert wait_until(one_series_up, timeout=15, interval=0.2), metrics_text(port)
        lock = folder / DATABASE_PROBE_LOCK
        prober = int(lock.read_text())
        assert prober in pids
        os.kill(prober, signal.SIGKILL)
        # gunicorn's child_exit removes the dead prober's values; another worker takes the lock and probes.
        assert wait_until(lambda: lock.read_text().strip() not in ("", str(prober)), timeout=15), "no takeover"
        assert psutil.pid_exists(int(lock.read_text()))
        assert wait_until(lambda: not list(folder.glob(f"gauge_*_{prober}.db")), timeout=10)
        assert wait_until(one_series_up, timeout=15, interval=0.2), metrics_text(port)
    finally:
        output = stop_gunicorn(process)
    assert output.count("probes the database for this host") == 2, output[-3000:]
