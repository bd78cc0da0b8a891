"""gunicorn as the tests run it: `gunicorn -c gunicorn.conf.py` in a subprocess on a free port."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.embedded_pg import free_port
from tests.helpers import HEALTH_TOKEN, app_config

ROOT = Path(__file__).resolve().parents[2]


def get_json(port: int, path: str, token: str | None = HEALTH_TOKEN) -> tuple[int, dict]:
    """GET `path` on loopback with a bearer token (none for token=None); return the status and JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _wait_until_up(process: subprocess.Popen, port: int, log_path: str, workers: int, timeout: float = 30) -> None:
    """Wait until every worker has opened its pool and the port answers; fail if gunicorn exits first."""
    # Up means every worker has opened its pool (post_worker_init, after its signal
    # handlers exist) and the port answers: a test that starts its load earlier races the
    # second worker's boot, and a SIGTERM sent during a boot can be missed by that worker.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited early with {process.returncode}")
        with open(log_path) as log:
            booted = log.read().count(" opened in pid ")
        if booted >= workers:
            try:
                if get_json(port, "/api/health", token=None)[0] == 200:
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError("gunicorn's workers did not all come up in time")


def start_gunicorn(database_url: str, **overrides: object) -> tuple[subprocess.Popen, int]:
    """Start gunicorn -c gunicorn.conf.py on a free port and wait for every worker; stop it with stop_gunicorn."""
    port = free_port()
    defaults = {
        "PORT": port,
        "WEB_CONCURRENCY": 2,
        "GUNICORN_THREADS": 4,
        "DB_POOL_MAX_CONNECTIONS": 4,
        "LOG_LEVEL": "info",
    }
    settings = app_config(database_url, **{**defaults, **overrides})
    env = {**os.environ, **settings}
    # A file, not a pipe: nobody reads a pipe while the test runs, and a full one blocks the workers.
    log = tempfile.NamedTemporaryFile("w+", prefix="gunicorn-", suffix=".log")  # noqa: SIM115 (closed by stop_gunicorn)
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "apps.api.wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    process.log = log  # type: ignore[attr-defined]
    try:
        _wait_until_up(process, port, log.name, int(settings["WEB_CONCURRENCY"]))
    except BaseException:
        stop_gunicorn(process)
        raise
    return process, port


def stop_gunicorn(process: subprocess.Popen) -> str:
    """Stop gunicorn gracefully (SIGTERM), kill it if it hangs; return what it printed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log = process.log  # type: ignore[attr-defined]
    log.seek(0)
    output = log.read()
    log.close()
    return output
