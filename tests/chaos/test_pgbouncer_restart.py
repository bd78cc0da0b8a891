"""PgBouncer restarted under load: 503s while it is away, the same workers serve once it accepts again.

gunicorn (2 workers, DB_POOLER=pgbouncer) reaches the test's database through a real PgBouncer
in transaction mode. The test restarts PgBouncer's process as an operator would (SIGTERM, its
immediate shutdown: every client and server connection is closed, then a new process on the
same port) while clients read, book and check health.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.helpers import apply_role_timeouts, through
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
from tests.support.gunicorn import WORKERS, each_workers_pool, start_workers, stop_gunicorn, worker_pids
from tests.support.load import LoadGenerator

pytestmark = [pytest.mark.slow, pytest.mark.pgbouncer, pytest.mark.timeout(SCENARIO_TIMEOUT)]


def test_pgbouncer_restart_under_load_answers_503_and_the_same_workers_recover(
    make_pgbouncer, direct_database_url, world
):
    apply_role_timeouts(direct_database_url)
    bouncer = make_pgbouncer()
    process, port, pids = start_workers(through(bouncer, direct_database_url), DB_POOLER="pgbouncer")
    try:
        restarts = []
        with LoadGenerator(port, world, max_seconds=15 + SCALE * 5) as load:
            time.sleep(1.5)
            for _ in range(SCALE):
                stopping = time.monotonic()
                bouncer.stop()
                down = time.monotonic()
                bouncer.start()  # returns once PgBouncer answers on its port again
                up = time.monotonic()
                restarts.append((stopping, down, up))
                time.sleep(3.0)
        replies = load.replies
        pids_after = worker_pids(process)
        pools = each_workers_pool(port, pids_after)
    finally:
        output = stop_gunicorn(process)
    assert_clean_replies(replies, log=output)
    assert pids_after == pids, "a worker was replaced"
    assert output.count("Booting worker") == WORKERS, output[-3000:]
    assert "WORKER TIMEOUT" not in output
    # The restart closed the pools' connections: each worker found some dead and opened new ones.
    assert all(pool["discarded"] + pool["connection_errors"] > 0 for pool in pools.values()), pools
    assert_failures_only_during(replies, restarts)
    figures: dict[str, Any] = {"rounds": []}
    for number, (stopping, down, up) in enumerate(restarts):
        # A restart takes a fraction of a second, so the next one comes before this one's window
        # would end: what was still running when the next one began belongs to the next one.
        end = restarts[number + 1][0] if number + 1 < len(restarts) else up + RECOVERY_LIMIT + 1
        window = [r for r in replies if stopping - 1 <= r.started and r.ended < end]
        figures["rounds"].append(
            {
                "stop_took_seconds": round(down - stopping, 3),
                "away_seconds": round(up - stopping, 3),
                **outage_round(window, stopping, up, pids),
            }
        )
    figures.update(load_figures(direct_database_url, world, replies))
    figures["pools"] = {
        key: sum(pool[key] for pool in pools.values())
        for key in ("discarded", "connection_errors", "connections_opened")
    }
    figures["same_worker_pids"] = pids_after == pids
    record("pgbouncer_restart", figures)
