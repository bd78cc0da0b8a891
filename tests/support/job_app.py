"""An app with test-only jobs, for scheduler processes the tests start:
`flask --app tests.support.job_app jobs run --only tick_a ...` (tests/support/schedulers.py).

Each job writes one row per run into job_hits (the test creates the table), committed at
once, so a run killed midway still shows that it started.
"""

from __future__ import annotations

import os
import time

from apps.api.app import create_app
from apps.api.app.jobs import current_run, job
from apps.api.app.models.database import execute_write

# A test creates it on its database before starting the schedulers.
HITS_TABLE = """
CREATE TABLE job_hits (
    job text NOT NULL,
    slot_at timestamptz NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    phase text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)"""
# sleepy's lease: short, so a takeover comes within the test's few seconds.
SLEEPY_TIMEOUT = 3


def _hit(phase: str) -> None:
    run = current_run()
    execute_write(
        "INSERT INTO job_hits (job, slot_at, attempt, pid, phase) VALUES (%s, %s, %s, %s, %s)",
        (run.job.name, run.slot_at, run.attempt, os.getpid(), phase),
    )


@job("tick_a", every=1, timeout=5)
def tick_a() -> dict[str, int]:
    """Record the run."""
    _hit("done")
    return {"hits": 1}


@job("tick_b", every=1, timeout=5)
def tick_b() -> dict[str, int]:
    """Record the run, taking a little time, so that runs of both jobs overlap across schedulers."""
    time.sleep(0.05)
    _hit("done")
    return {"hits": 1}


@job("sleepy", every=3600, timeout=SLEEPY_TIMEOUT)
def sleepy() -> dict[str, int]:
    """Record the start; the first attempt then sleeps far past its lease (the test kills it)."""
    _hit("start")
    if current_run().attempt == 1:
        time.sleep(60)
    _hit("done")
    return {"hits": 1}


app = create_app()
