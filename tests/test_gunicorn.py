"""Server smoke tests (gunicorn and granian): real workers, real HTTP, a clean stop that leaves no backend behind."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.embedded_pg import free_port
from tests.helpers import app_backends, app_config, refusal_lines
from tests.support.gunicorn import GRANIAN, GUNICORN_COMMAND, ROOT, get_json, stop_gunicorn

pytestmark = pytest.mark.slow


def test_serves_from_two_workers_and_stops_cleanly(app_server, database_url, admin_conn):
    process, port = app_server.start(database_url)
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: get_json(port, "/api/health/db/test"), range(80)))
        assert {status for status, _ in results} == {200}
        assert all(body["test_result"]["test"] == 1 for _, body in results)
        status, body = get_json(port, "/api/health/db")
        assert status == 200
        assert body["pool_stats"]["max_connections"] == 4
        assert 1 <= app_backends(admin_conn) <= 2 * 4
    finally:
        output = stop_gunicorn(process)
    assert process.returncode == 0, output
    assert output.count("closed in pid") == 2, output
    deadline = time.monotonic() + 5
    while app_backends(admin_conn) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app_backends(admin_conn) == 0


@pytest.mark.parametrize(
    ("settings", "sentence"),
    [
        (
            {"GUNICORN_THREADS": 8, "DB_POOL_MAX_CONNECTIONS": 4},
            "GUNICORN_THREADS (8) is above DB_POOL_MAX_CONNECTIONS (4)",
        ),
        ({"DB_POOL_TIMEOUT": "0"}, "DB_POOL_TIMEOUT must be greater than 0"),
        ({"DB_POOL_MAX_CONNECTIONS": "abc"}, "DB_POOL_MAX_CONNECTIONS must be a whole number, got 'abc'."),
        ({"APP_ENV": "production", "SECRET_KEY": "dev-secret-key-change-me"}, "SECRET_KEY is a development default"),
    ],
    ids=["threads-above-pool", "zero-timeout", "not-a-number", "dev-secret-in-production"],
)
def test_gunicorn_refuses_bad_settings_before_starting_workers(database_url, tmp_path, settings, sentence):
    env = {**os.environ, **app_config(database_url, PORT=free_port(), **settings), "TMPDIR": str(tmp_path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # so gunicorn.conf.py makes its own, in TMPDIR
    result = subprocess.run(
        GUNICORN_COMMAND,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = result.stdout + result.stderr
    # The sentence alone, no traceback (gunicorn's own log lines aside), and status 2.
    assert result.returncode == 2, output
    assert "Traceback" not in output
    (line,) = refusal_lines(result.stderr)
    assert sentence in line
    assert "Booting worker" not in output
    assert not list(tmp_path.glob("rentals-metrics-*")), "the refused start left its metrics folder behind"


def test_granian_refuses_more_threads_than_connections_and_stops(database_url):
    settings = app_config(
        database_url, PORT=free_port(), WEB_CONCURRENCY=2, GUNICORN_THREADS=8, DB_POOL_MAX_CONNECTIONS=4
    )
    result = subprocess.run(
        GRANIAN.command(settings), cwd=ROOT, env={**os.environ, **settings}, capture_output=True, text=True, timeout=60
    )
    # granian's exit code is 0 or 1, whichever of its main loop and its worker watcher sees the stop first.
    assert "granian's --blocking-threads (8) is above DB_POOL_MAX_CONNECTIONS (4)" in result.stdout + result.stderr
    assert " opened in pid " not in result.stdout + result.stderr


def test_granian_workers_and_threads_are_what_the_app_counts(database_url):
    # WEB_CONCURRENCY and GUNICORN_THREADS in the environment say 9 and 1; granian runs 2 x 4.
    process, port = GRANIAN.start(database_url, env={"WEB_CONCURRENCY": "9", "GUNICORN_THREADS": "1"})
    try:
        status, body = get_json(port, "/api/health/db")
    finally:
        stop_gunicorn(process)
    assert status == 200
    assert body["recommendations"]["current"]["workers"] == 2
    assert body["recommendations"]["current"]["threads"] == 4
    assert body["recommendations"]["current"]["total_max_connections"] == 2 * 4
