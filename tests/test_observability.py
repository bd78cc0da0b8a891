"""Metrics, health across workers, request ids and JSON logs, under a real 2-worker gunicorn and granian."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from email.message import Message

import pytest
from prometheus_client import Histogram

from apps.api.app.metrics import BufferedHistogram
from tests.helpers import HEALTH_HEADERS, HEALTH_TOKEN, bearer, undocumented_metric_families, wait_until
from tests.support.gunicorn import start_gunicorn, stop_gunicorn

pytestmark = pytest.mark.slow

FLUSH_SECONDS = 1.5  # a worker's buffered histograms reach the shared files within about a second


def request(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """One request on a fresh connection (so the kernel spreads them over the workers); header names any case."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def worker_pids(port: int, count: int = 200) -> set[int]:
    """Send `count` health requests from 8 threads; return the pids that answered."""
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: request(port, "/api/health"), range(count)))
    assert all(status == 200 for status, _, _ in replies)
    return {json.loads(body)["pid"] for _, _, body in replies}


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if not match:
            continue
        sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


@pytest.fixture
def server(app_server, database_url):
    process, port = app_server.start(database_url, LOG_FORMAT="json", LOG_LEVEL="info")
    output: dict[str, str] = {}
    try:
        yield process, port, output
    finally:
        output["text"] = stop_gunicorn(process)


def test_metrics_count_requests_from_both_workers(server):
    _, port, _ = server
    assert request(port, "/metrics")[0] == 401
    count = "rentals_http_request_duration_seconds_count"

    def health_count() -> float:
        return metric_sum(request(port, "/metrics", HEALTH_HEADERS)[2].decode(), count, endpoint="health.health")

    # Each worker adds its buffered observations about once a second (metrics.BufferedHistogram):
    # wait for the start-up checks to land, then count 200 more.
    before = health_count()
    while wait_until(lambda seen=before: health_count() != seen, timeout=FLUSH_SECONDS, interval=0.2):
        before = health_count()
    pids = worker_pids(port, 200)
    assert len(pids) == 2, "the kernel sent every request to one worker; cannot test the sum"
    assert wait_until(lambda: health_count() - before == 200, timeout=5, interval=0.2), health_count() - before
    status, headers, body = request(port, "/metrics", HEALTH_HEADERS)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert metric_sum(text, count, endpoint="health.health") - before == 200
    assert metric_sum(text, count, endpoint="metrics.prometheus_metrics", status="401") == 1
    undocumented = undocumented_metric_families(text)
    assert not undocumented, f"/metrics exports families the README does not list: {undocumented}"
    for name in (
        "rentals_db_pool_acquisitions_total",
        "rentals_db_pool_wait_seconds_count",
        "rentals_db_pool_timeouts_total",
        "rentals_db_query_duration_seconds_count",
    ):
        assert re.search(rf"^{name}", text, re.MULTILINE), f"{name} is not exported"


def test_health_db_sums_the_pools_of_all_live_workers(server):
    _, port, _ = server
    pids = worker_pids(port)
    assert len(pids) == 2

    def both_workers_published():
        body = json.loads(request(port, "/api/health/db", HEALTH_HEADERS)[2])
        return body if {w["pid"] for w in body["all_workers"]["workers"]} == pids else None

    body = wait_until(both_workers_published, timeout=10, interval=0.2)
    assert body, "the aggregate never listed both workers"
    workers = body["all_workers"]
    assert workers["worker_count"] == 2
    assert workers["max_connections"] == 2 * 4
    for key in ("in_use", "available", "total", "waiting", "max_connections"):
        assert workers[key] == sum(w[key] for w in workers["workers"])
    assert workers["total"] >= 2, "each worker's pool opens DB_POOL_MIN_CONNECTIONS at start"


def test_a_killed_worker_leaves_the_aggregate(server):
    _, port, _ = server
    pids = worker_pids(port)
    assert len(pids) == 2

    def both_listed() -> bool:
        body = json.loads(request(port, "/api/health/db", HEALTH_HEADERS)[2])
        return {w["pid"] for w in body["all_workers"]["workers"]} == pids

    assert wait_until(both_listed, timeout=10, interval=0.2), "the aggregate never listed both workers"
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)

    def replaced():
        try:
            body = json.loads(request(port, "/api/health/db", HEALTH_HEADERS)[2])
        except ConnectionError:
            # reuse_port: a connection the kernel had queued on the killed worker's own
            # socket is reset, as on any crash; the next one reaches a live worker.
            return None
        listed = {w["pid"] for w in body["all_workers"]["workers"]}
        return body if victim not in listed and len(listed) == 2 else None

    body = wait_until(replaced, timeout=15, interval=0.2)
    assert body, "the killed worker stayed in the aggregate, or no new worker was counted"
    assert body["all_workers"]["worker_count"] == 2


def test_request_ids_round_trip_and_bad_ones_are_replaced(server):
    _, port, _ = server
    _, headers, _ = request(port, "/api/health", {"X-Request-ID": "trace-123.abc"})
    assert headers["X-Request-ID"] == "trace-123.abc"
    _, headers, _ = request(port, "/api/health", {"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])
    _, headers, _ = request(port, "/api/health")
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])


def test_json_log_lines_parse_and_carry_no_secret(database_url):
    process, port = start_gunicorn(database_url, LOG_FORMAT="json", LOG_LEVEL="info")
    try:
        request(port, "/api/health/db/test", {**HEALTH_HEADERS, "X-Request-ID": "log-check-1"})
        request(port, "/api/health/db", {"Authorization": "Bearer wrong-token-value"})
    finally:
        output = stop_gunicorn(process)
    lines = [line for line in output.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    requests = [r for r in records if r.get("logger") == "apps.api.request"]
    traced = [r for r in requests if r["request_id"] == "log-check-1"]
    assert len(traced) == 1
    line = traced[0]
    assert line["method"] == "GET" and line["path"] == "/api/health/db/test" and line["status"] == 200
    assert line["duration_ms"] > 0 and line["pool_wait_ms"] >= 0 and line["level"] == "INFO"
    assert any(r["status"] == 401 for r in requests), [(r["path"], r["status"]) for r in requests]
    assert any(r.get("logger", "").startswith("gunicorn") for r in records), output[:3000]
    password = database_url.split(":")[2].split("@")[0]
    for secret in (HEALTH_TOKEN, "wrong-token-value", password):
        assert secret not in output


def test_request_lines_name_the_authenticated_user_and_the_pool_wait(make_app, admin_user, capfd):
    app = make_app(LOG_FORMAT="json", LOG_LEVEL="info")
    client = app.test_client()
    headers = bearer(app, admin_user)
    capfd.readouterr()
    assert client.get("/api/customers", headers=headers).status_code == 200
    assert client.get("/api/customers", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    assert client.get("/no/such/page", headers=headers).status_code == 404
    records = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    lines = [r for r in records if r.get("logger") == "apps.api.request"]
    assert [(r["path"], r["status"], r["user_id"]) for r in lines] == [
        ("/api/customers", 200, admin_user["id"]),
        ("/api/customers", 401, None),
        ("/no/such/page", 404, None),
    ]
    assert lines[0]["pool_wait_ms"] > 0 and lines[0]["duration_ms"] >= lines[0]["pool_wait_ms"]
    assert lines[1]["pool_wait_ms"] == 0
    assert len({r["request_id"] for r in lines}) == 3


def test_buffered_histograms_match_direct_observations_after_a_flush():
    buckets = (0.001, 0.01, 0.1)
    direct = Histogram("direct_seconds", "d", ["op"], buckets=buckets, registry=None)
    buffered_twin = Histogram("buffered_seconds", "b", ["op"], buckets=buckets, registry=None)
    buffered = BufferedHistogram(buffered_twin)
    values = [0.0, 0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.2, 30.0]
    for value in values:
        direct.labels("read").observe(value)
        buffered.observe(value, "read")
    direct.labels("write").observe(0.002)
    buffered.observe(0.002, "write")

    def samples(histogram):
        return {
            (s.name.split("_seconds")[1], tuple(sorted(s.labels.items()))): s.value
            for s in histogram.collect()[0].samples
            if not s.name.endswith("_created")
        }

    assert all(v == 0 for v in samples(buffered_twin).values()), "nothing lands before a flush"
    buffered.flush()
    assert samples(buffered_twin) == samples(direct)
    buffered.flush()  # a second flush adds nothing
    assert samples(buffered_twin) == samples(direct)
