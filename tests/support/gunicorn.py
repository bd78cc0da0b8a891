"""The servers as the tests run them: gunicorn (`gunicorn -c gunicorn.conf.py`) or granian (the
README's command) in a subprocess on a free port, stopped by stop_gunicorn whatever happens; and
what their workers and their pools report."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from apps.api.server import granian as server_granian
from devtools.embedded_pg import free_port
from tests.helpers import HEALTH_HEADERS, HEALTH_TOKEN, app_config, wait_until
from tests.support.load import send

ROOT = Path(__file__).resolve().parents[2]
# The production command (README), run from ROOT by this virtualenv's Python.
GUNICORN_COMMAND = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "apps.api.wsgi:app"]
# What AppServer.start runs unless told otherwise: 2 workers x 4 threads, 4 connections per pool.
WORKERS = 2
THREADS = 4
POOL_MAX = 4


def get_json(port: int, path: str, token: str | None = HEALTH_TOKEN) -> tuple[int, dict]:
    """GET `path` on loopback with a bearer token (none for token=None); return the status and JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


class AppServer:
    """One server the app runs under (gunicorn or granian) as the tests run it: its production
    command in a subprocess on a free port, and how to tell its workers booted."""

    def __init__(self, name: str, command: Callable[[dict[str, str]], list[str]], boot_line: str) -> None:
        self.name = name
        self.command = command
        # What the server logs once per worker it starts (a replaced worker logs it again).
        self.boot_line = boot_line

    def __repr__(self) -> str:
        return self.name

    def scenario(self, name: str) -> str:
        """Return the chaos report's name for scenario `name` under this server (gunicorn's: `name` itself)."""
        return name if self is GUNICORN else f"{name}_{self.name}"

    def start(
        self, database_url: str, *, env: dict[str, str] | None = None, **overrides: object
    ) -> tuple[subprocess.Popen, int]:
        """Start the server on a free port and wait for every worker; stop it with stop_gunicorn.

        `overrides` are settings, for the command line and the environment alike; `env` is
        put in the environment only, after them.
        """
        port = free_port()
        defaults = {
            "PORT": port,
            "WEB_CONCURRENCY": WORKERS,
            "GUNICORN_THREADS": THREADS,
            "DB_POOL_MAX_CONNECTIONS": POOL_MAX,
            "LOG_LEVEL": "info",
        }
        settings = app_config(database_url, **{**defaults, **overrides})
        environment = {**os.environ, **settings, **(env or {})}
        # A file, not a pipe: nobody reads a pipe while the test runs, and a full one blocks the workers.
        log = tempfile.NamedTemporaryFile("w+", prefix=f"{self.name}-", suffix=".log")  # noqa: SIM115 (closed by stop_gunicorn)
        process = subprocess.Popen(
            self.command(settings),
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        process.log = log  # type: ignore[attr-defined]
        try:
            self._wait_until_up(process, port, log.name, int(settings["WEB_CONCURRENCY"]))
        except BaseException:
            stop_gunicorn(process)
            raise
        return process, port

    def _wait_until_up(self, process: subprocess.Popen, port: int, log_path: str, workers: int) -> None:
        """Wait until every worker has opened its pool and the port answers; fail if the server exits first."""
        # Up means every worker has opened its pool (gunicorn: post_worker_init, after its
        # signal handlers exist) and the port answers: a test that starts its load earlier
        # races the second worker's boot, and a SIGTERM sent during a boot can be missed.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                with open(log_path) as log:
                    raise AssertionError(f"{self.name} exited early with {process.returncode}:\n{log.read()[-3000:]}")
            with open(log_path) as log:
                booted = log.read().count(" opened in pid ")
            if booted >= workers:
                try:
                    if get_json(port, "/api/health", token=None)[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        with open(log_path) as log:
            raise AssertionError(f"{self.name}'s workers did not all come up in time:\n{log.read()[-3000:]}")


GUNICORN = AppServer("gunicorn", lambda settings: GUNICORN_COMMAND, "Booting worker")
GRANIAN = AppServer(
    "granian",
    lambda s: server_granian.command(
        sys.executable, int(s["WEB_CONCURRENCY"]), int(s["GUNICORN_THREADS"]), "127.0.0.1", int(s["PORT"])
    ),
    "Spawning worker-",
)
SERVERS = (GUNICORN, GRANIAN)


def start_gunicorn(database_url: str, **overrides: object) -> tuple[subprocess.Popen, int]:
    """Start gunicorn -c gunicorn.conf.py on a free port and wait for every worker; stop it with stop_gunicorn."""
    return GUNICORN.start(database_url, **overrides)


def stop_gunicorn(process: subprocess.Popen) -> str:
    """Stop the server gracefully (SIGTERM), kill it if it hangs; return what it printed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        pass
    finally:
        # Past the 40 s, or when a test timeout interrupts the wait: no server outlives its test.
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()
        _remove_granian_metrics(process.pid)
    log = process.log  # type: ignore[attr-defined]
    log.seek(0)
    output = log.read()
    log.close()
    return output


def _remove_granian_metrics(pid: int) -> None:
    # granian's workers leave their metrics folder for the next granian to remove; tests remove theirs.
    for folder in Path(tempfile.gettempdir()).glob(f"{server_granian.METRICS_FOLDER_PREFIX}{pid}-*"):
        shutil.rmtree(folder, ignore_errors=True)


# -- a running gunicorn's workers and their pools --------------------------------------


def worker_pids(process: subprocess.Popen) -> set[int]:
    """Return the pids of the server's workers (the main process's children), once all WORKERS have forked."""
    master = psutil.Process(process.pid)
    wait_until(lambda: len(master.children()) >= WORKERS, timeout=10)
    return {child.pid for child in master.children()}


def health(port: int) -> dict[str, Any]:
    """Return one /api/health/db reply's body (whichever worker answers)."""
    reply = send(port, "GET", "/api/health/db", HEALTH_HEADERS, kind="health")
    assert reply.status in (200, 503), reply
    return reply.body


def pools_settled(port: int, pids: set[int], timeout: float = 10.0) -> dict[str, Any]:
    """Wait until every worker has published its pool with nothing in use or waiting; return the aggregate."""
    last: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal last
        last = health(port)["all_workers"]
        listed = {w["pid"] for w in last["workers"]}
        return listed == pids and last["in_use"] == 0 and last["waiting"] == 0

    assert wait_until(settled, timeout=timeout, interval=0.2), f"pools did not settle: {last}"
    return last


def each_workers_pool(port: int, pids: set[int], timeout: float = 10.0) -> dict[int, dict[str, Any]]:
    """Return every worker's own pool_stats, asking /api/health/db until each has answered."""
    seen: dict[int, dict[str, Any]] = {}

    def all_seen() -> bool:
        body = health(port)
        seen[body["pid"]] = body["pool_stats"]
        return set(seen) >= pids

    assert wait_until(all_seen, timeout=timeout, interval=0.0), f"only {set(seen)} of {pids} answered"
    return seen


def start_workers(
    database_url: str, server: AppServer = GUNICORN, **overrides: object
) -> tuple[subprocess.Popen, int, set[int]]:
    """Start the server and wait until both workers have booted and published their pools.

    Load sent while a worker is still booting would test the boot, not the fault.
    """
    process, port = server.start(database_url, **overrides)
    try:
        pids = worker_pids(process)
        pools_settled(port, pids)
    except BaseException:
        stop_gunicorn(process)
        raise
    return process, port, pids
