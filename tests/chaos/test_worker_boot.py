"""A worker booting while the others serve: health and metrics answer while its metrics files are new."""

from __future__ import annotations

import pytest

from tests.helpers import HEALTH_HEADERS
from tests.support.chaos import unhandled_errors
from tests.support.gunicorn import start_workers, stop_gunicorn
from tests.support.load import send

pytestmark = pytest.mark.slow


def test_health_and_metrics_answer_while_another_worker_creates_its_metrics_files(database_url, tmp_path):
    # Seen under load in the restart test: the second worker booted while the first answered
    # /api/health/db, which read the second one's new, still empty file and failed with a 500.
    # The race lasts microseconds; this test puts the folder in that state on purpose.
    folder = tmp_path / "metrics"
    folder.mkdir()
    process, port, pids = start_workers(database_url, PROMETHEUS_MULTIPROC_DIR=folder)
    try:
        (folder / f"counter_{max(pids) + 1}.db").touch()  # what a worker being born has written so far
        replies = [send(port, "GET", path, HEALTH_HEADERS) for path in ("/api/health/db", "/metrics") for _ in range(4)]
    finally:
        output = stop_gunicorn(process)
    assert [r.status for r in replies] == [200] * len(replies), unhandled_errors(output)
