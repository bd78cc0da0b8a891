"""Health endpoints: the process is up, the pool's state and advice, a real query; bearer auth."""

from __future__ import annotations

import pytest

from devtools.embedded_pg import free_port
from tests.helpers import HEALTH_TOKEN, give_back, hold

pytestmark = pytest.mark.both_routes

POOL_KEYS = {"min_connections", "max_connections", "available", "in_use", "total", "waiting"}
COUNTER_KEYS = {
    "acquisitions",
    "waits",
    "wait_time_ms",
    "timeouts",
    "rejected",
    "connections_opened",
    "connection_errors",
    "discarded",
    "recycled",
    "leaks_detected",
}


def test_health_answers_without_auth_or_database(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert response.json["app_env"] == "test"
    assert isinstance(response.json["pid"], int)


def test_database_health_reports_pool_status_warnings_and_recommendations(client, health_headers):
    response = client.get("/api/health/db", headers=health_headers)
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "healthy"
    assert body["warnings"] == []
    assert body["database"]["reachable"] is True
    assert body["database"]["latency_ms"] >= 0
    stats = body["pool_stats"]
    assert set(stats) >= POOL_KEYS | COUNTER_KEYS
    assert stats["min_connections"] == 1
    assert stats["max_connections"] == 5
    assert stats["in_use"] == 0
    assert stats["total"] == stats["in_use"] + stats["available"]
    recommendations = body["recommendations"]
    assert {"current", "optimal_max_connections", "advice"} <= set(recommendations)
    assert recommendations["current"]["max_connections"] == 5
    assert recommendations["current"]["server_max_connections"] == 200
    assert isinstance(recommendations["advice"], list)
    assert recommendations["advice"]


def test_database_test_runs_a_real_query(client, health_headers):
    response = client.get("/api/health/db/test", headers=health_headers)
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert response.json["test_result"]["test"] == 1
    assert response.json["latency_ms"] >= 0


@pytest.mark.parametrize("path", ["/api/health/db", "/api/health/db/test"])
@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "unauthorized"),
        ("", "unauthorized"),
        ("Bearer", "unauthorized"),
        ("Bearer ", "unauthorized"),
        ("Bearer wrong-token", "invalid_token"),
        (f"Bearer {HEALTH_TOKEN}x", "invalid_token"),
        (f"Basic {HEALTH_TOKEN}", "unauthorized"),
        (f"Token {HEALTH_TOKEN}", "unauthorized"),
        (HEALTH_TOKEN, "unauthorized"),
    ],
)
def test_health_endpoints_refuse_bad_credentials(client, path, authorization, code):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json) == {"error"}
    assert set(response.json["error"]) == {"code", "message", "details"}
    assert response.json["error"]["code"] == code


def test_bearer_scheme_is_case_insensitive(client):
    response = client.get("/api/health/db/test", headers={"Authorization": f"bearer {HEALTH_TOKEN}"})
    assert response.status_code == 200


def test_bad_credentials_never_touch_the_database(make_app):
    # Auth must not depend on the database, so a 401 comes back even when it is unreachable.
    app = make_app(DATABASE_URL=f"postgresql://nobody:nothing@127.0.0.1:{free_port()}/nowhere")
    response = app.test_client().get("/api/health/db", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("held", "status"),
    [(0, "healthy"), (2, "healthy"), (3, "warning"), (4, "warning")],
)
def test_status_turns_warning_at_the_warn_threshold(make_app, health_headers, held, status):
    # 5 connections, threshold 60 %: 3 held is 60 %.
    app = make_app(DB_POOL_MAX_CONNECTIONS=5, DB_POOL_WARN_THRESHOLD=0.6)
    pool, conns = hold(app, held)
    try:
        response = app.test_client().get("/api/health/db", headers=health_headers)
    finally:
        give_back(pool, conns)
    assert response.status_code == 200
    body = response.json
    assert body["status"] == status
    assert body["pool_stats"]["in_use"] == held
    if status == "warning":
        assert any("DB_POOL_WARN_THRESHOLD" in w for w in body["warnings"]), body["warnings"]
    else:
        assert body["warnings"] == []


def test_saturated_pool_is_a_warning_not_an_error(make_app, health_headers):
    app = make_app(DB_POOL_MAX_CONNECTIONS=2, DB_POOL_TIMEOUT=0.3)
    pool, conns = hold(app, 2)
    try:
        response = app.test_client().get("/api/health/db", headers=health_headers)
    finally:
        give_back(pool, conns)
    assert response.status_code == 200
    assert response.json["status"] == "warning"
    assert response.json["database"]["busy"] is True
    assert len(response.json["warnings"]) >= 2


@pytest.mark.timeout(12)
def test_monitoring_answers_quickly_while_requests_hold_every_connection(make_app, health_headers):
    # Requests would wait 30 s for a connection; each monitoring read waits at most
    # database.MONITORING_WAIT (1 s), so /metrics, /api/health/db and /api/health/jobs all
    # answer well within the test's limit (with DB_POOL_TIMEOUT they would take 30-60 s each).
    app = make_app(DB_POOL_MAX_CONNECTIONS=2, DB_POOL_TIMEOUT=30, DB_POOL_MAX_WAITING=10)
    client = app.test_client()
    pool, conns = hold(app, 2)
    try:
        metrics = client.get("/metrics", headers=health_headers)
        db = client.get("/api/health/db", headers=health_headers)
        jobs = client.get("/api/health/jobs", headers=health_headers)
    finally:
        give_back(pool, conns)
    assert metrics.status_code == 200
    assert "rentals_outbox_pending NaN" in metrics.get_data(as_text=True)
    assert db.status_code == 200
    assert db.json["database"]["busy"] is True
    assert jobs.status_code == 503


def test_database_down_answers_error_and_503_never_500(make_app, health_headers):
    app = make_app(DATABASE_URL=f"postgresql://nobody:nothing@127.0.0.1:{free_port()}/nowhere", DB_RETRY_AFTER=4)
    client = app.test_client()

    response = client.get("/api/health/db", headers=health_headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "4"
    body = response.json
    assert body["status"] == "error"
    assert body["database"]["reachable"] is False
    assert set(body["pool_stats"]) >= POOL_KEYS
    assert "recommendations" in body

    for _ in range(2):
        response = client.get("/api/health/db/test", headers=health_headers)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "4"
        assert set(response.json["error"]) == {"code", "message", "details"}
        assert response.json["error"]["code"] == "database_unavailable"

    assert client.get("/api/health").status_code == 200


def test_unknown_path_answers_json_404(client):
    response = client.get("/api/health/nope")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_wrong_method_answers_json_405_with_allow(client, health_headers):
    response = client.post("/api/health/db", headers=health_headers)
    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_unexpected_error_answers_json_500_naming_nothing_internal(app):
    @app.get("/_test/crash")
    def crash():
        raise RuntimeError("secret internals")

    response = app.test_client().get("/_test/crash")
    assert response.status_code == 500
    assert response.json["error"]["code"] == "internal_error"
    assert "secret" not in response.get_data(as_text=True)


@pytest.mark.direct_only(reason="the budget against max_connections holds without a pooler")
def test_advice_uses_the_servers_usable_connections_in_every_worker(make_app, health_headers):
    # 40 workers x 5 = 200: within max_connections (200) but above what the app's role may
    # open (200 less 3 reserved). No startup check ran in this process: the probe measures.
    app = make_app(WEB_CONCURRENCY=40, DB_POOL_MAX_CONNECTIONS=5, GUNICORN_THREADS=4)
    body = app.test_client().get("/api/health/db", headers=health_headers).json
    assert body["database"]["server_reserved_connections"] == 3
    assert body["recommendations"]["optimal_max_connections"] == {"low": 4, "high": 4}
    assert any(
        "the server allows 197 (max_connections 200 less 3 reserved)" in a for a in body["recommendations"]["advice"]
    )
