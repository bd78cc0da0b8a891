"""Graceful shutdown: SIGTERM under load finishes the requests in flight and closes every pool."""

from __future__ import annotations

import datetime
import signal
import time
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.support.chaos import SCALE, SCENARIO_TIMEOUT, assert_clean_replies, check_bookings, record, summary
from tests.support.faults import row_locked, wait_gone, waiting_bookings_of
from tests.support.gunicorn import WORKERS, AppServer, start_workers, stop_gunicorn
from tests.support.load import Burst, LoadGenerator, World

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SCENARIO_TIMEOUT)]


# Bookings held in the database over SIGTERM, apart from the load's (which start at FIRST_DAY).
HELD_FIRST_DAY = datetime.date(2030, 1, 1)


def sigterm_round(
    server: AppServer, database_url: str, admin_conn, world: World, held_product: int, day: int
) -> dict[str, Any]:
    """Start the server, load it, SIGTERM it with requests held in the database; check and return the figures.

    The load stops sending 0.3 s before SIGTERM, so every request it sent was accepted by a
    worker by then: gunicorn resets connections still in the kernel's listen queue when it
    stops (see docs/RELIABILITY.md); this test is about the requests the workers hold. One
    more request, sent 0.1 s after SIGTERM, shows what a late client gets.
    """
    process, port, pids = start_workers(database_url, server)
    try:
        load = LoadGenerator(port, world, threads=4, max_seconds=30).start()
        try:
            time.sleep(1.0)
            with row_locked(database_url, held_product):
                # Requests certainly in flight at SIGTERM: bookings of one product, waiting
                # inside the database for its row; the load books other products.
                held_bookings = [
                    {
                        "customer_id": world.customers[0],
                        "product_id": held_product,
                        "start_date": (HELD_FIRST_DAY + datetime.timedelta(days=day + n)).isoformat(),
                        "end_date": (HELD_FIRST_DAY + datetime.timedelta(days=day + n + 1)).isoformat(),
                    }
                    for n in range(4)
                ]
                burst = Burst(port, [("POST", "/api/rentals", world.headers, b, "write") for b in held_bookings])
                held = wait_until(lambda: waiting_bookings_of(admin_conn, held_product) >= 4, timeout=5)
                assert held, "the held requests never reached the database"
                load.halt()
                time.sleep(0.3)
                sigterm_at = time.monotonic()
                process.send_signal(signal.SIGTERM)
                time.sleep(0.1)
                late = Burst(port, [("GET", f"/api/customers/{world.customers[0]}", world.headers, None, "read")])
                time.sleep(0.4)
            process.wait(timeout=40)
            exited_at = time.monotonic()
        finally:
            replies = load.stop()
        slow = burst.result()
        late_reply = late.result()[0]
    finally:
        output = stop_gunicorn(process)
    in_flight = [r for r in replies if r.started < sigterm_at < r.ended]
    cut = [(r.path, r.error) for r in replies + slow if r.status is None]
    assert not cut, f"{len(cut)} requests sent before SIGTERM got no complete reply: {cut[:5]}\n{output[-6000:]}"
    assert [r.status for r in slow] == [201] * 4, [(r.status, r.body) for r in slow]
    with admin_conn.cursor() as cur:
        cur.execute("SELECT id FROM rentals WHERE product_id = %s AND start_date >= %s", (held_product, HELD_FIRST_DAY))
        held_rows = {row[0] for row in cur.fetchall()}
    assert {r.body["id"] for r in slow} <= held_rows, "a booking acknowledged during shutdown is not in the table"
    assert_clean_replies(replies, log=output)
    assert all(r.ok for r in replies), summary([r for r in replies if not r.ok])
    assert process.returncode == 0, output[-3000:]
    assert output.count("closed in pid") == WORKERS, output[-3000:]
    assert all(f"closed in pid {pid}" in output for pid in pids)
    backends = wait_gone(admin_conn)
    assert backends == 0
    return {
        "replies": replies,
        "requests_sent_before_sigterm": len(replies) + len(slow),
        "in_flight_at_sigterm": len(in_flight) + len(slow),
        "in_flight_completed": sum(r.ok for r in in_flight + slow),
        "held_in_the_database_over_sigterm": len(slow),
        "held_requests_seconds": [round(r.seconds, 2) for r in slow],
        "cut_off": len(cut),
        "request_sent_after_sigterm": {
            "status": late_reply.status,
            "error": late_reply.error,
            "seconds": round(late_reply.seconds, 2),
        },
        "sigterm_to_exit_seconds": round(exited_at - sigterm_at, 2),
        "pools_closed": output.count("closed in pid"),
        "exit_code": process.returncode,
        "backends_after": backends,
    }


def test_sigterm_under_load_finishes_in_flight_requests_and_closes_every_pool(
    app_server, database_url, admin_conn, world, make_product
):
    held_product = make_product()["id"]  # booked only by the held requests, never by the load
    rounds = [sigterm_round(app_server, database_url, admin_conn, world, held_product, 10 * n) for n in range(SCALE)]
    replies = [r for figures in rounds for r in figures.pop("replies")]
    record(
        app_server.scenario("graceful_shutdown"),
        {
            "rounds": rounds,
            "replies": summary(replies),
            "bookings": check_bookings(admin_conn, world, replies),
        },
    )
