"""Leaks: a view that never gives its connection back is reported with its endpoint."""

from __future__ import annotations

import logging
import time

import pytest

from apps.api.app.models.database import get_pool, pool_stats
from tests.helpers import HEALTH_HEADERS, wait_until
from tests.support.chaos import record

pytestmark = pytest.mark.slow


def test_a_leaking_view_is_reported_with_its_endpoint(make_app, caplog):
    app = make_app(DB_POOL_LEAK_THRESHOLD=0.2)
    leaked = []

    @app.get("/_test/leak")
    def leaky_view():
        leaked.append(get_pool().getconn())  # never given back: the bug under test
        return {"leaked": len(leaked)}

    caplog.set_level(logging.WARNING, logger="apps.api.app.pool.pool")
    client = app.test_client()
    try:
        started = time.monotonic()
        assert client.get("/_test/leak").status_code == 200
        assert wait_until(lambda: any("possible connection leak" in r.getMessage() for r in caplog.records), timeout=5)
        detected_in = time.monotonic() - started
        time.sleep(0.5)  # one report per leak, not one per maintenance round
        reports = [r.getMessage() for r in caplog.records if "possible connection leak" in r.getMessage()]
        stats = pool_stats(app)
        body = client.get("/api/health/db", headers=HEALTH_HEADERS).json
    finally:
        with app.app_context():
            for conn in leaked:
                get_pool().putconn(conn)
    assert len(reports) == 1, reports
    assert "by GET /_test/leak (endpoint leaky_view)" in reports[0]
    assert stats["leaks_detected"] == 1
    assert stats["in_use"] == 1
    assert any("DB_POOL_LEAK_THRESHOLD" in advice for advice in body["recommendations"]["advice"])
    assert any("came back after" in r.getMessage() for r in caplog.records)
    assert pool_stats(app)["in_use"] == 0
    record(
        "leak",
        {
            "settings": {"DB_POOL_LEAK_THRESHOLD": 0.2},
            "log_line": reports[0],
            "detected_after_seconds": round(detected_in, 3),
            "leaks_detected": stats["leaks_detected"],
            "in_use_while_leaked": stats["in_use"],
        },
    )
