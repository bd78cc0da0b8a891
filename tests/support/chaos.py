"""What every chaos test checks, and the figures `make chaos` reports.

CHAOS_SCALE is 1 in `make test` (every scenario once, briefly); `make chaos` raises it (more
rounds, longer outages, bigger bursts) and sets CHAOS_REPORT, the JSON file that
tests/chaos/conftest.py writes the recorded figures to, quoted by docs/RELIABILITY.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import psycopg2

from tests.support.gunicorn import POOL_MAX, THREADS, WORKERS
from tests.support.load import FIRST_DAY, Reply, World

# 1 in `make test` (every scenario once, briefly); `make chaos` raises it.
SCALE = max(1, int(os.environ.get("CHAOS_SCALE", "1")))
REPORT = os.environ.get("CHAOS_REPORT")
# pyproject's 60 s test timeout per unit of scale: the scenarios that repeat CHAOS_SCALE times
# (the restart test takes 12-18 s in make test and 60-70 s in make chaos) mark themselves with it.
SCENARIO_TIMEOUT = 60 * SCALE

POOL_TIMEOUT = 2.0  # DB_POOL_TIMEOUT of app_config
RETRY_AFTER = "2"  # DB_RETRY_AFTER's default
# What a busy 2-core machine may add to a bound before a reply counts as too slow.
MARGIN = 1.5
RECOVERY_LIMIT = 2.0
ERROR_KEYS = {"code", "message", "details"}
DATABASE_CODES = {"database_unavailable", "database_timeout", "database_busy", "query_timeout", "database_read_only"}

# The report lists the scenarios in this order (docs/RELIABILITY.md's), whichever file ran first.
SCENARIOS = (
    "database_restart",
    "database_restart_granian",
    "pgbouncer_restart",
    "backends_killed",
    "overload_gunicorn",
    "overload_pool_queue",
    "slow_query",
    "lock_wait",
    "graceful_shutdown",
    "graceful_shutdown_granian",
    "granian_recycle",
    "leak",
    "replica_outage",
    "failover_switchover",
    "failover_crash_async",
    "failover_crash_sync",
)
FIGURES: dict[str, Any] = {}


# -- checks ----------------------------------------------------------------------------


def summary(replies: list[Reply]) -> dict[str, Any]:
    """Return counts by status and error code, and latency percentiles in ms."""
    times = sorted(r.seconds for r in replies)

    def percentile(p: float) -> float:
        return round(times[min(len(times) - 1, int(p * len(times)))] * 1000, 1) if times else 0.0

    return {
        "requests": len(replies),
        "status": dict(sorted(Counter(str(r.status) if r.status else "no reply" for r in replies).items())),
        "error_codes": dict(sorted(Counter(r.code for r in replies if r.code).items())),
        "p50_ms": percentile(0.5),
        "p99_ms": percentile(0.99),
        "max_ms": round(times[-1] * 1000, 1) if times else 0.0,
    }


def unhandled_errors(log: str) -> str:
    """Return the tracebacks the server logged for unhandled errors (500s), for failure messages."""
    blocks = log.split("unhandled error")[1:]
    return "\n---\n".join(block[:2500] for block in blocks[:2])


def assert_clean_replies(replies: list[Reply], *, bound: float = POOL_TIMEOUT + MARGIN, log: str = "") -> None:
    """Every reply is complete, 2xx or a 503 with Retry-After in its JSON shape, and came within `bound` s."""
    cut = [(r.method, r.path, r.error) for r in replies if r.status is None]
    assert not cut, f"{len(cut)} requests got no complete reply: {cut[:5]}"
    unexpected = [(r.method, r.path, r.status, r.body) for r in replies if r.status not in (200, 201, 503)]
    assert not unexpected, (
        f"{len(unexpected)} replies were neither 2xx nor 503: {unexpected[:5]}\n{unhandled_errors(log)}"
    )
    for r in replies:
        if r.status != 503:
            continue
        assert r.retry_after == RETRY_AFTER, (r.path, r.retry_after)
        if r.path == "/api/health/db":
            assert r.body["status"] == "error", r.body
        else:
            assert set(r.body["error"]) == ERROR_KEYS, r.body
            assert r.code in DATABASE_CODES, r.body
    slowest = max(replies, key=lambda r: r.seconds)
    assert slowest.seconds <= bound, f"{slowest.method} {slowest.path} took {slowest.seconds:.2f} s (bound {bound} s)"


def booking_key(booking: dict[str, Any]) -> tuple[int, datetime.date, datetime.date]:
    """Return (product, start, end) of a booking body."""
    return (
        booking["product_id"],
        datetime.date.fromisoformat(booking["start_date"]),
        datetime.date.fromisoformat(booking["end_date"]),
    )


def check_bookings(conn: psycopg2.extensions.connection, world: World, replies: list[Reply]) -> dict[str, int]:
    """Assert every acknowledged booking is in the table, whole, and nothing else is; return the figures.

    A booking answered with an error is either absent or complete: a single INSERT commits
    whole or not at all, and when the connection dies after the server committed, the
    client gets a 503 for a booking that exists (counted as errored_but_committed).
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, customer_id, product_id, start_date, end_date, status, daily_rate_cents, total_cents,"
            " created_by FROM rentals WHERE start_date >= %s",
            (FIRST_DAY,),
        )
        names = [c.name for c in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    by_key = {(r["product_id"], r["start_date"], r["end_date"]): r for r in rows}
    assert len(by_key) == len(rows), "two rows for one booking"
    writes = [r for r in replies if r.kind == "write"]
    sent = {booking_key(r.booking): r.booking for r in writes}
    assert len(sent) == len(writes), "the load sent one booking twice"
    phantoms = [key for key in by_key if key not in sent]
    assert not phantoms, f"rows nobody booked: {phantoms[:5]}"
    acknowledged = [r for r in writes if r.status == 201]
    missing = [r.body["id"] for r in acknowledged if by_key.get(booking_key(r.booking), {}).get("id") != r.body["id"]]
    assert not missing, f"{len(missing)} acknowledged bookings are not in the table: {missing[:5]}"
    for r in acknowledged:
        assert by_key[booking_key(r.booking)]["total_cents"] == r.body["total_cents"]
    for key, row in by_key.items():
        booking = sent[key]
        days = (row["end_date"] - row["start_date"]).days
        rate = world.products[row["product_id"]]
        assert (row["customer_id"], row["status"], row["daily_rate_cents"], row["total_cents"], row["created_by"]) == (
            booking["customer_id"],
            "reserved",
            rate,
            rate * days,
            world.user_id,
        ), f"half-written or wrong row {row}"
    errored = [r for r in writes if r.status != 201]
    assert all(r.status == 503 for r in errored), [(r.status, r.body) for r in errored if r.status != 503][:5]
    committed = [r for r in errored if booking_key(r.booking) in by_key]
    assert len(rows) == len(acknowledged) + len(committed)
    return {
        "bookings_sent": len(writes),
        "acknowledged_201": len(acknowledged),
        "acknowledged_found": len(acknowledged) - len(missing),
        "answered_503": len(errored),
        "answered_503_but_committed": len(committed),
        "rows_in_table": len(rows),
    }


def assert_failures_within(replies: list[Reply], stopping: float, until: float, late_label: str) -> list[Reply]:
    """Assert no request failed before the fault (`stopping`) or started failing after `until`; return the failures."""
    failed = [r for r in replies if not r.ok]
    early = [r for r in failed if r.ended < stopping]
    assert not early, f"{len(early)} failures before the fault: {[(r.path, r.status, r.body) for r in early[:3]]}"
    late = [r for r in failed if r.started > until]
    assert not late, f"{len(late)} failures {late_label}: {late[:3]}"
    return failed


def outage_round(replies: list[Reply], stopping: float, up: float, pids: set[int]) -> dict[str, Any]:
    """Check one outage's replies (the database, or PgBouncer, down from `stopping` to `up`); return its figures.

    503s only from the stop to RECOVERY_LIMIT after the server is back; each worker answers
    /api/health/db with 200 within RECOVERY_LIMIT of the server being back.
    """
    during = [r for r in replies if stopping <= r.started < up]
    assert_failures_within(replies, stopping, up + RECOVERY_LIMIT, f"{RECOVERY_LIMIT} s after the server was back")
    assert any(r.status == 503 for r in during), "no request failed during the outage: it proved nothing"
    recovered_in = {}
    for pid in pids:
        first = next(
            (r for r in replies if r.path == "/api/health/db" and r.started >= up and r.ok and r.body["pid"] == pid),
            None,
        )
        assert first is not None, f"worker {pid} never answered /api/health/db with 200 after the outage"
        recovered_in[pid] = first.ended - up
    assert max(recovered_in.values()) <= RECOVERY_LIMIT, f"recovery per worker: {recovered_in}"
    first_success = min((r.ended for r in replies if r.started >= up and r.ok and r.kind != "health"), default=None)
    return {
        "requests_during_outage": summary(during),
        "recovery_seconds_per_worker": sorted(round(s, 3) for s in recovered_in.values()),
        "first_success_after_seconds": round(first_success - up, 3) if first_success else None,
    }


def assert_failures_only_during(replies: list[Reply], outages: list[tuple[float, float, float]]) -> None:
    """Assert every failed request overlapped an outage (stopping, down, up) or the recovery after it."""
    outside = [
        r
        for r in replies
        if not r.ok and not any(r.ended >= stopping and r.started <= up + RECOVERY_LIMIT for stopping, _, up in outages)
    ]
    assert not outside, f"{len(outside)} failures outside the outages: {[(r.path, r.status) for r in outside[:5]]}"


def acknowledged_missing(conn: psycopg2.extensions.connection, replies: list[Reply]) -> int:
    """Return how many bookings answered 201 have no row on this server (a crash lost them)."""
    ids = [r.body["id"] for r in replies if r.kind == "write" and r.status == 201]
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM rentals WHERE id = ANY(%s)", (ids,))
        return len(ids) - cur.fetchone()[0]


def load_figures(database_url: str, world: World, replies: list[Reply]) -> dict[str, Any]:
    """Return the bookings found against those acknowledged, and the replies of all requests and of the writes."""
    conn = psycopg2.connect(database_url)
    try:
        bookings = check_bookings(conn, world, replies)
    finally:
        conn.close()
    return {
        "bookings": bookings,
        "all_requests": summary(replies),
        "writes": summary([r for r in replies if r.kind == "write"]),
    }


def count_rentals(conn: psycopg2.extensions.connection) -> int:
    """Return how many rentals the table holds."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM rentals")
        return cur.fetchone()[0]


def summed(pools: dict[int, dict[str, Any]], *keys: str) -> dict[str, Any]:
    """Return the named pool counters summed over workers."""
    return {key: round(sum(p[key] for p in pools.values()), 1) for key in keys}


# -- figures ---------------------------------------------------------------------------


def record(scenario: str, figures: dict[str, Any]) -> None:
    """Keep a scenario's figures for the report."""
    FIGURES[scenario] = figures


def write_report(path: str, started: datetime.datetime, postgresql: str) -> None:
    """Write the figures every test recorded to `path`, with the machine they came from."""
    memory = psutil.virtual_memory().total
    order = {name: n for n, name in enumerate(SCENARIOS)}
    report = {
        "run": {
            "started_utc": started.isoformat(timespec="seconds"),
            "finished_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "chaos_scale": SCALE,
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {memory / 2**30:.0f} GiB",
            "python": platform.python_version(),
            "postgresql": postgresql,
            "gunicorn": f"{WORKERS} workers x {THREADS} threads (gthread), DB_POOL_MAX_CONNECTIONS {POOL_MAX}",
        },
        "scenarios": {name: FIGURES[name] for name in sorted(FIGURES, key=lambda name: order.get(name, len(order)))},
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
