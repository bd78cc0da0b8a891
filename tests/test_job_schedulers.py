"""Several scheduler processes on one database: each slot of each job runs once, and a run
whose scheduler is killed is taken over after its timeout, never while it holds its lease."""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest

from tests.helpers import wait_until
from tests.support.job_app import HITS_TABLE, SLEEPY_TIMEOUT
from tests.support.schedulers import schedulers

pytestmark = [pytest.mark.slow, pytest.mark.both_routes, pytest.mark.timeout(120)]

TICKS = ["tick_a", "tick_b"]
# Slots of 1 s each job should see while all schedulers run.
WINDOW_SECONDS = 3


@pytest.fixture
def hits(admin_conn):
    """Create the job_hits table the test jobs write to; return a function running a query on it."""
    with admin_conn.cursor() as cur:
        cur.execute(HITS_TABLE)

    def query(sql: str, params: tuple = ()) -> list[tuple]:
        with admin_conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    return query


def test_every_slot_of_every_job_runs_exactly_once_with_two_then_four_schedulers(
    database_url, route_settings, hits, tmp_path
):
    with schedulers(database_url, tmp_path, TICKS, route_settings) as group:
        group.add(2)
        time.sleep(WINDOW_SECONDS)
        group.add(2)
        time.sleep(WINDOW_SECONDS)
        codes = group.stop_all()
    assert codes == [0] * 4, [s.output()[-2000:] for s in group.running]
    for job in TICKS:
        runs = hits(
            "SELECT slot_at, count(*), min(attempt), max(attempt) FROM job_hits WHERE job = %s"
            " GROUP BY slot_at ORDER BY slot_at",
            (job,),
        )
        assert len(runs) >= 2 * WINDOW_SECONDS, runs
        assert all(n == 1 and attempts == [1, 1] for _, n, *attempts in runs), runs
        # No slot skipped between the first and the last.
        seconds = [slot.timestamp() for slot, *_ in runs]
        assert [b - a for a, b in itertools.pairwise(seconds)] == [1.0] * (len(seconds) - 1)
        recorded = hits("SELECT status, count(*) FROM job_runs WHERE job = %s GROUP BY status", (job,))
        assert recorded == [("succeeded", len(runs))]
    # The work spread: more than one scheduler ran slots.
    assert len({pid for (pid,) in hits("SELECT DISTINCT pid FROM job_hits")}) > 1


@pytest.mark.direct_only("the lease is the same statement on either route; the test above covers PgBouncer")
def test_a_killed_schedulers_run_is_taken_over_after_its_timeout(database_url, hits, tmp_path):
    with schedulers(database_url, tmp_path, ["sleepy"]) as group:
        running = group.add(2)
        assert wait_until(lambda: hits("SELECT pid FROM job_hits WHERE phase = 'start'"), timeout=15)
        ((holder,),) = hits("SELECT pid FROM job_hits WHERE phase = 'start'")
        (claimed_until,) = hits("SELECT claimed_until FROM job_runs WHERE job = 'sleepy'")[0]
        os.kill(holder, signal.SIGKILL)
        assert wait_until(lambda: hits("SELECT 1 FROM job_hits WHERE phase = 'done'"), timeout=SLEEPY_TIMEOUT + 15)
        survivor = next(s for s in running if s.pid != holder)
        assert "took slot" in survivor.output()
    starts = hits("SELECT pid, attempt, at FROM job_hits WHERE phase = 'start' ORDER BY at")
    done = hits("SELECT pid, attempt FROM job_hits WHERE phase = 'done'")
    assert [(pid, attempt) for pid, attempt, _ in starts] == [(holder, 1), (survivor.pid, 2)]
    assert done == [(survivor.pid, 2)]
    # Nobody started it again while the killed scheduler's lease held.
    assert starts[1][2] >= claimed_until
    ((status, attempt, error),) = hits("SELECT status, attempt, error FROM job_runs WHERE job = 'sleepy'")
    assert (status, attempt) == ("succeeded", 2) and "did not end within its timeout" in error


@pytest.mark.direct_only("the route does not change how a scheduler stops")
def test_a_second_signal_abandons_the_run_for_another_scheduler_to_retry_at_once(database_url, hits, tmp_path):
    with schedulers(database_url, tmp_path, ["sleepy"]) as group:
        (scheduler,) = group.add(1)
        assert wait_until(lambda: hits("SELECT 1 FROM job_hits WHERE phase = 'start'"), timeout=15)
        scheduler.terminate()
        # The first signal lets the run finish: the scheduler is still there.
        assert wait_until(lambda: "signal again to abandon it" in scheduler.output(), timeout=10)
        assert scheduler.process.poll() is None
        scheduler.process.send_signal(signal.SIGTERM)
        assert scheduler.process.wait(timeout=15) == 1, scheduler.output()[-2000:]
    ((status, error, retry_due),) = hits("SELECT status, error, retry_at <= now() FROM job_runs WHERE job = 'sleepy'")
    assert (status, retry_due) == ("failed", True) and error.startswith("abandoned")
    assert hits("SELECT runs FROM jobs WHERE name = 'sleepy'") == [({"abandoned": 1},)]
    assert hits("SELECT phase FROM job_hits") == [("start",)]
