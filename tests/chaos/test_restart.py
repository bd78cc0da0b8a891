"""The database restarts under load: 503s while it is down, the same workers serve when it is back."""

from __future__ import annotations

import time
from typing import Any

import psycopg2
import pytest

from tests.helpers import load_migrations, private_server
from tests.support.chaos import (
    RECOVERY_LIMIT,
    SCALE,
    SCENARIO_TIMEOUT,
    assert_clean_replies,
    assert_failures_only_during,
    load_figures,
    outage_round,
    record,
)
from tests.support.gunicorn import WORKERS, start_workers, stop_gunicorn, worker_pids
from tests.support.load import LoadGenerator, seed_world

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SCENARIO_TIMEOUT)]


def prepare_database(server) -> str:
    """Create and migrate a database on a private server; return its URL."""
    server.execute("CREATE DATABASE rentals_chaos")
    load_migrations(server.host, server.port, server.user, "rentals_chaos", server.password)
    return server.dsn("rentals_chaos")


def test_database_restart_under_load_answers_503_and_the_same_workers_recover(app_server):
    outage = 3.0 if SCALE == 1 else 8.0
    with private_server() as server:
        url = prepare_database(server)
        conn = psycopg2.connect(url)
        conn.autocommit = True
        try:
            world = seed_world(conn)
        finally:
            conn.close()
        process, port, pids = start_workers(url, app_server)
        try:
            rounds = []
            with LoadGenerator(port, world, max_seconds=20 + SCALE * (outage + 6)) as load:
                time.sleep(1.5)
                for _ in range(SCALE):
                    stopping = time.monotonic()
                    server.stop()
                    down = time.monotonic()
                    time.sleep(outage)
                    server.start()
                    up = time.monotonic()
                    rounds.append((stopping, down, up))
                    time.sleep(3.0)
            replies = load.replies
            pids_after = worker_pids(process)
        finally:
            output = stop_gunicorn(process)
        assert_clean_replies(replies, log=output)
        assert pids_after == pids, "a worker was replaced"
        assert output.count(app_server.boot_line) == WORKERS, output[-3000:]
        assert "WORKER TIMEOUT" not in output
        assert_failures_only_during(replies, rounds)
        figures: dict[str, Any] = {"outage_seconds": outage, "rounds": []}
        for stopping, down, up in rounds:
            window = [r for r in replies if stopping - 1 <= r.started < up + RECOVERY_LIMIT + 1]
            figures["rounds"].append(
                {
                    "stop_took_seconds": round(down - stopping, 3),
                    "down_seconds": round(up - stopping, 3),
                    **outage_round(window, stopping, up, pids),
                }
            )
        figures.update(load_figures(url, world, replies))
        figures["same_worker_pids"] = pids_after == pids
        record(app_server.scenario("database_restart"), figures)
