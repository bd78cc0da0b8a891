"""A read replica stopped and started again under load: the primary serves its reads meanwhile, with
no error at all, and the replica serves again once it is back.

gunicorn (2 workers, each with its own pool and replay-position checks per replica) runs on a
primary with one streaming replica (DATABASE_REPLICA_URLS), both from the embedded binaries,
while clients read, book and check health. CHAOS_SCALE stop-start rounds.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.helpers import HEALTH_HEADERS, metric_samples
from tests.support.chaos import SCALE, SCENARIO_TIMEOUT, assert_clean_replies, load_figures, record, summary
from tests.support.gunicorn import get_json, start_workers, stop_gunicorn, worker_pids
from tests.support.load import LoadGenerator, seed_world, send

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SCENARIO_TIMEOUT)]


def _replica_state(port: int) -> str:
    return get_json(port, "/api/health/db")[1]["replicas"][0]["state"]


def _replica_reads(port: int) -> float:
    # rentals_db_reads_total{target="replica1"}: every worker's reads the replica served.
    reply = send(port, "GET", "/metrics", HEALTH_HEADERS, kind="metrics")
    assert reply.status == 200, reply.body
    return sum(
        value
        for labels, value in metric_samples(reply.body, "rentals_db_reads_total")
        if labels["target"] == "replica1"
    )


def _wait_for_state(port: int, state: str, timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    while _replica_state(port) != state:
        assert time.monotonic() < deadline, f"the replica did not become {state}"
        time.sleep(0.05)
    return time.monotonic()


def test_replica_outage_under_load_costs_no_error_and_the_replica_serves_again(running_pair, primary_conn):
    world = seed_world(primary_conn)
    running_pair.replica.wait_caught_up()
    process, port, pids = start_workers(
        running_pair.primary_url,
        DATABASE_REPLICA_URLS=running_pair.replica_url,
        DB_REPLICA_CHECK_INTERVAL_MS=50,
    )
    try:
        rounds = []
        with LoadGenerator(port, world, max_seconds=20 + SCALE * 10) as load:
            _wait_for_state(port, "up")
            time.sleep(1.0)
            for _ in range(SCALE):
                stopping = time.monotonic()
                running_pair.replica.stop()
                down = _wait_for_state(port, "down")
                time.sleep(1.0)
                running_pair.replica.start()
                started = time.monotonic()
                up = _wait_for_state(port, "up")
                rounds.append((stopping, down, started, up))
                served_before = _replica_reads(port)
                time.sleep(1.5)
                # Back in use: the replica serves reads again (each worker once its own check saw it).
                assert _replica_reads(port) > served_before
        replies = load.replies
        pids_after = worker_pids(process)
    finally:
        output = stop_gunicorn(process)
    assert_clean_replies(replies, log=output)
    # The primary ran throughout: not even a 503.
    assert {r.status for r in replies} <= {200, 201}, summary(replies)
    assert pids_after == pids, "a worker was replaced"
    figures: dict[str, Any] = {"rounds": []}
    for stopping, down, started, up in rounds:
        during = [r for r in replies if stopping <= r.started and r.ended <= up]
        figures["rounds"].append(
            {
                "noticed_down_after_seconds": round(down - stopping, 3),
                "serving_again_after_start_seconds": round(up - started, 3),
                "replies_while_away": summary(during),
            }
        )
    figures.update(load_figures(running_pair.primary_url, world, replies))
    record("replica_outage", figures)
