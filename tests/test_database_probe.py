"""The host's database probe: rentals_database_up tells whether the database answers, traffic or not."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from apps.api.app import create_app, probe
from apps.api.app.metrics import exposition
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
            assert wait_until(lambda: probe_figures("rentals_database_up").get("primary") == 1, timeout=5)
            assert 0 < probe_figures("rentals_database_probe_seconds")["primary"] < 5
            server.stop()
            # No request: only the probe can tell.
            assert wait_until(lambda: probe_figures("rentals_database_up").get("primary") == 0, timeout=5)
            body = app.test_client().get("/api/health", headers=HEALTH_HEADERS).json
            assert body["status"] == "ok"
            server.start()
            assert wait_until(lambda: probe_figures("rentals_database_up").get("primary") == 1, timeout=5)
            assert pool.stats()["acquisitions"] == 0, "a request reached the pool: the probe was not alone"
            probe = app.test_client().get("/api/health/db", headers=HEALTH_HEADERS).json["probe"]
            assert probe["primary"]["up"] is True, probe
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
