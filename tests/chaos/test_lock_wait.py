"""Lock waits: a locked table makes requests wait DB_LOCK_TIMEOUT_MS, answer 503, then succeed."""

from __future__ import annotations

import time

import pytest

from tests.support.chaos import (
    MARGIN,
    SCALE,
    SCENARIO_TIMEOUT,
    assert_clean_replies,
    check_bookings,
    count_rentals,
    record,
    summary,
)
from tests.support.faults import locked
from tests.support.gunicorn import WORKERS, start_workers, stop_gunicorn
from tests.support.load import Burst, send_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SCENARIO_TIMEOUT)]


def test_locked_table_makes_requests_wait_the_lock_timeout_then_503_then_succeed(database_url, admin_conn, world):
    lock_timeout_ms = 800
    process, port, _ = start_workers(database_url, DB_LOCK_TIMEOUT_MS=lock_timeout_ms)
    try:
        customer = world.customers[1]
        reads = [("GET", f"/api/rentals?customer_id={customer}&limit=5", world.headers, None, "read")] * 3
        assert {r.status for r in send_all(port, reads * 2)} == {200}
        rentals_before = count_rentals(admin_conn)
        refused, waited, served = [], [], []
        for _ in range(SCALE):
            bookings = [("POST", "/api/rentals", world.headers, world.next_booking(), "write") for _ in range(3)]
            with locked(database_url, "rentals"):
                refused += send_all(port, reads + bookings)
            # The same requests once the lock is gone.
            served += send_all(port, reads + bookings)
            # A lock shorter than the timeout: the requests wait for it, then succeed.
            shorter = reads + [("POST", "/api/rentals", world.headers, world.next_booking(), "write") for _ in range(3)]
            with locked(database_url, "rentals"):
                burst = Burst(port, shorter)
                time.sleep(0.2)
            waited += burst.result()
    finally:
        output = stop_gunicorn(process)
    assert output.count("Booting worker") == WORKERS
    bound = lock_timeout_ms / 1000 + MARGIN
    assert_clean_replies(refused, bound=bound, log=output)
    assert {r.status for r in refused} == {503}, summary(refused)
    assert {r.code for r in refused} == {"query_timeout"}
    assert all("lock wait timeout" in r.body["error"]["message"] for r in refused)
    assert all(r.seconds >= lock_timeout_ms / 1000 - 0.05 for r in refused)
    assert_clean_replies(served + waited, bound=bound, log=output)
    assert all(r.ok for r in served + waited), summary([r for r in served + waited if not r.ok])
    writes = [r for r in served + waited if r.kind == "write"]
    assert count_rentals(admin_conn) == rentals_before + len(writes), "a refused booking was written, or one was lost"
    record(
        "lock_wait",
        {
            "settings": {"DB_LOCK_TIMEOUT_MS": lock_timeout_ms, "DB_STATEMENT_TIMEOUT_MS": 15000},
            "while_locked": summary(refused),
            "after_release": summary(served),
            "lock_released_within_the_timeout": summary(waited),
            # The refused bookings were sent again once the lock was gone: count them there.
            "bookings": check_bookings(admin_conn, world, served + waited),
        },
    )
