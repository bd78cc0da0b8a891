"""Every app backend killed mid-load: only 503s, no lost or half-written booking, quick recovery."""

from __future__ import annotations

import time

import pytest

from tests.support.chaos import (
    RECOVERY_LIMIT,
    SCALE,
    SCENARIO_TIMEOUT,
    assert_clean_replies,
    check_bookings,
    record,
    summary,
    summed,
)
from tests.support.faults import kill_app_backends
from tests.support.gunicorn import WORKERS, each_workers_pool, pools_settled, start_workers, stop_gunicorn, worker_pids
from tests.support.load import LoadGenerator

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SCENARIO_TIMEOUT)]


def test_killed_backends_mid_load_cost_only_503s_and_no_write(database_url, admin_conn, world):
    kills = 3 * SCALE
    process, port, pids = start_workers(database_url)
    try:
        killed = []
        with LoadGenerator(port, world, max_seconds=15 + 1.5 * kills) as load:
            time.sleep(1.0)
            for _ in range(kills):
                at = time.monotonic()
                killed.append((at, kill_app_backends(admin_conn)))
                time.sleep(1.0)
            time.sleep(0.5)
        replies = load.replies
        pids_after = worker_pids(process)
        settled = pools_settled(port, pids)
        pools = each_workers_pool(port, pids)
    finally:
        output = stop_gunicorn(process)
    assert_clean_replies(replies, log=output)
    assert pids_after == pids, "a worker was replaced"
    assert output.count("Booting worker") == WORKERS
    assert sum(n for _, n in killed) >= kills, "no backend was killed: the test proved nothing"
    first_kill = killed[0][0]
    assert all(r.ok for r in replies if r.ended < first_kill), "failures before the first kill"
    rounds, recovery = [], []
    for at, count in killed:
        first_success = min(r.ended for r in replies if r.started >= at and r.ok and r.kind != "health")
        recovery.append(round(first_success - at, 3))
        after = [r for r in replies if at <= r.started < at + 1.0]
        rounds.append({"backends_killed": count, "next_second": summary(after)})
    assert max(recovery) <= RECOVERY_LIMIT
    record(
        "backends_killed",
        {
            "kills": kills,
            "rounds": rounds,
            "recovery_seconds": recovery,
            "all_requests": summary(replies),
            "reads": summary([r for r in replies if r.kind == "read"]),
            "writes": summary([r for r in replies if r.kind == "write"]),
            "bookings": check_bookings(admin_conn, world, replies),
            "pool_counters": summed(pools, "discarded", "connections_opened", "ping_failures"),
            "in_use_after": settled["in_use"],
            "same_worker_pids": pids_after == pids,
        },
    )
    assert settled["in_use"] == 0
