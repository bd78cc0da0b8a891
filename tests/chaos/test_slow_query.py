"""Slow queries: a statement past DB_STATEMENT_TIMEOUT_MS is cancelled with a 503 and its connection stays."""

from __future__ import annotations

import time

import pytest

from tests.support.chaos import (
    MARGIN,
    SCALE,
    SCENARIO_TIMEOUT,
    assert_clean_replies,
    count_rentals,
    record,
    summary,
    summed,
)
from tests.support.faults import lock_waiters, locked
from tests.support.gunicorn import WORKERS, each_workers_pool, start_workers, stop_gunicorn
from tests.support.load import Burst, send_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SCENARIO_TIMEOUT)]


def test_statement_past_the_timeout_is_cancelled_with_503_and_the_connection_stays(database_url, admin_conn, world):
    # A real endpoint made slow from outside: another session locks the table it reads, and
    # with no lock_timeout the statement waits until statement_timeout cancels it.
    timeout_ms = 500
    process, port, pids = start_workers(database_url, DB_STATEMENT_TIMEOUT_MS=timeout_ms, DB_LOCK_TIMEOUT_MS=0)
    try:
        customer = world.customers[0]
        read = ("GET", f"/api/customers/{customer}", world.headers, None, "read")
        assert {r.status for r in send_all(port, [read] * 8)} == {200}
        rentals_before = count_rentals(admin_conn)
        rounds = []
        for _ in range(SCALE):
            waiting: set[int] = set()
            bookings = [("POST", "/api/rentals", world.headers, world.next_booking(), "write") for _ in range(2)]
            with locked(database_url, "customers"):
                burst = Burst(port, [read] * 4 + bookings)
                deadline = time.monotonic() + timeout_ms / 1000
                while len(waiting) < 6 and time.monotonic() < deadline:
                    waiting.update(lock_waiters(admin_conn))
                    time.sleep(0.02)
                replies = burst.result()
            rounds.append((replies, sorted(waiting)))
        with admin_conn.cursor() as cur:
            cur.execute(
                "SELECT pid, state FROM pg_stat_activity WHERE pid = ANY(%s)", ([p for _, w in rounds for p in w],)
            )
            survivors = dict(cur.fetchall())
        after = send_all(port, [read] * 20)
        pools = each_workers_pool(port, pids)
    finally:
        output = stop_gunicorn(process)
    assert output.count("Booting worker") == WORKERS
    figures = []
    for replies, waiting in rounds:
        assert_clean_replies(replies, bound=timeout_ms / 1000 + MARGIN, log=output)
        assert {r.status for r in replies} == {503}, summary(replies)
        assert {r.code for r in replies} == {"query_timeout"}
        assert all("statement timeout" in r.body["error"]["message"] for r in replies)
        assert all(r.seconds >= timeout_ms / 1000 - 0.05 for r in replies)
        assert waiting, "no backend was seen waiting: the requests were not slow"
        figures.append({"replies": summary(replies), "backends_seen_waiting": len(waiting)})
    assert count_rentals(admin_conn) == rentals_before, "a cancelled booking was written"
    assert set(survivors) == {p for _, w in rounds for p in w}, "a connection whose statement was cancelled closed"
    assert set(survivors.values()) <= {"idle", "active"}
    assert {r.status for r in after} == {200}
    counters = summed(pools, "discarded", "ping_failures")
    assert counters == {"discarded": 0, "ping_failures": 0}
    record(
        "slow_query",
        {
            "settings": {"DB_STATEMENT_TIMEOUT_MS": timeout_ms, "DB_LOCK_TIMEOUT_MS": 0},
            "rounds": figures,
            "cancelled_connections_still_open": len(survivors),
            "requests_after": summary(after),
            "pool_counters": counters,
            "rentals_written_by_cancelled_bookings": count_rentals(admin_conn) - rentals_before,
        },
    )
