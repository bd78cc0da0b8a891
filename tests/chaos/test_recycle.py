"""Worker recycling under granian: a worker replaced under load drops no request.

granian's --workers-lifetime (at least 60 s) and SIGHUP take the same path: each worker in
turn gets a successor, which boots while the old one serves, then the old one is stopped
as by SIGTERM (it answers what it holds). SIGHUP makes it happen now instead of in 6 h.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.helpers import wait_until
from tests.support.chaos import SCENARIO_TIMEOUT, assert_clean_replies, record, summary
from tests.support.gunicorn import GRANIAN, WORKERS, start_workers, stop_gunicorn, worker_pids
from tests.support.load import LoadGenerator

# Two workers replaced one after the other, each after granian's --respawn-interval (15 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(SCENARIO_TIMEOUT + 60)]


def booted(process) -> int:
    """Return how many workers of `process` have opened their pool so far."""
    with open(process.log.name) as log:
        return log.read().count(" opened in pid ")


def test_granian_recycles_every_worker_under_load_without_dropping_a_request(database_url, world):
    process, port, pids = start_workers(database_url, GRANIAN)
    try:
        with LoadGenerator(port, world, threads=4, max_seconds=90) as load:
            time.sleep(1.0)
            process.send_signal(signal.SIGHUP)
            replaced = wait_until(lambda: not worker_pids(process) & pids and len(worker_pids(process)) == WORKERS, 60)
            time.sleep(1.0)
        replies = load.replies
        pids_after = worker_pids(process)
    finally:
        output = stop_gunicorn(process)
    assert replaced, output[-3000:]
    assert output.count(" closed in pid ") == 2 * WORKERS, output[-3000:]
    assert_clean_replies(replies, log=output)
    cut = [(r.path, r.error) for r in replies if r.status is None]
    assert not cut, f"{len(cut)} requests got no reply while the workers were replaced: {cut[:5]}"
    assert all(r.ok for r in replies), summary([r for r in replies if not r.ok])
    record(
        "granian_recycle", {"replies": summary(replies), "workers_before": sorted(pids), "after": sorted(pids_after)}
    )
