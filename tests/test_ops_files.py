"""The alert rules and the dashboard in deploy/ only name metrics that /metrics exports."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPS_FILES = [ROOT / "deploy/prometheus/alerts.yml", ROOT / "deploy/grafana/rentals-api.json"]


def named_metrics(path: Path) -> set[str]:
    return set(re.findall(r"\b(rentals_[a-z_]+)\b", path.read_text()))


@pytest.fixture
def exported(client, health_headers) -> set[str]:
    # One request that borrows a connection and runs a query, so every histogram has samples.
    assert client.get("/api/health/db/test", headers=health_headers).status_code == 200
    text = client.get("/metrics", headers=health_headers).get_data(as_text=True)
    samples = re.findall(r"^(rentals_[a-z_]+)", text, re.MULTILINE)
    families = re.findall(r"^# TYPE (rentals_[a-z_]+) ", text, re.MULTILINE)
    return {*samples, *families}


@pytest.mark.parametrize("path", OPS_FILES, ids=lambda p: p.name)
def test_every_metric_in_the_ops_files_is_exported(path, exported):
    names = named_metrics(path)
    assert names, f"{path.name} names no metric"
    missing = sorted(names - exported)
    assert not missing, f"{path.name} names metrics /metrics does not export: {missing}"


def test_dashboard_is_valid_json_with_panels():
    dashboard = json.loads((ROOT / "deploy/grafana/rentals-api.json").read_text())
    assert dashboard["panels"] and all(panel["targets"] for panel in dashboard["panels"])


def test_metrics_need_the_health_token(client):
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_system_health_reports_resources_with_thresholds(client, health_headers):
    assert client.get("/api/health/system").status_code == 401
    body = client.get("/api/health/system", headers=health_headers).get_json()
    assert body["status"] in ("healthy", "warning")
    assert body["thresholds_percent"] == {"cpu": 80.0, "memory": 85.0, "disk": 90.0}
    assert 0 <= body["cpu"]["percent"] <= 100 and body["cpu"]["count"] >= 1
    assert 0 < body["memory"]["percent"] < 100 and body["memory"]["total_bytes"] > 0
    assert 0 < body["disk"]["percent"] < 100
    assert body["process"]["open_files"] > 0 and body["process"]["uptime_seconds"] >= 0
    over = [name for name in ("cpu", "memory", "disk") if body[name]["percent"] > body["thresholds_percent"][name]]
    assert (body["status"] == "warning") == bool(over)
    assert len(body["warnings"]) == len(over)
