"""The host's database probe: rentals_database_up tells whether the database answers, traffic or not."""

from __future__ import annotations

import pytest

from apps.api.app import create_app
from apps.api.app.metrics import exposition
from apps.api.app.models.database import close_pool
from tests.helpers import HEALTH_HEADERS, app_config, metric_samples, pool_of, private_server, wait_until


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
