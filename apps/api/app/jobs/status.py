"""Each declared job's figures, read from PostgreSQL: what /api/health/jobs, /api/health/db
and /metrics report. The figures are the cluster's (every host reads the same rows)."""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..models import job_runs
from .registry import JOBS

# /api/health/db turns warning when a job has missed this many slots in a row.
MISSED_SLOTS_WARNING = 2


def figures(settings: Settings, *, timeout: float | None = None) -> list[dict[str, Any]]:
    """Return each declared job with its schedule, last success and failure, runs by outcome, next due time and lag.

    Raises DatabaseUnavailable (and psycopg2 errors) like any read; `timeout` is its wait for a connection.
    """
    declared = list(JOBS.values())
    periods = [job.period(settings) for job in declared]
    rows = job_runs.job_figures(
        [job.name for job in declared], periods, [job.offset for job in declared], timeout=timeout
    )
    return [
        {
            **row,
            "every_seconds": period,
            "timeout_seconds": job.timeout,
            "runs": {outcome: row["runs"].get(outcome, 0) for outcome in job_runs.OUTCOMES},
        }
        for job, period, row in zip(declared, periods, rows, strict=True)
    ]


def warnings(job_figures: list[dict[str, Any]]) -> list[str]:
    """Return a sentence for each job that missed MISSED_SLOTS_WARNING slots or more since its last success."""
    return [
        f"job {job['name']} has missed {job['missed_slots']} slots of {job['every_seconds']:g} s since its last"
        f" success ({job['last_success_at'].isoformat() if job['last_success_at'] else 'never'});"
        + (f" its last error: {job['last_error']}" if job["last_error"] else "")
        + " check that a scheduler runs (`flask --app apps.api.wsgi jobs run`) and what it logs"
        for job in job_figures
        if job["missed_slots"] >= MISSED_SLOTS_WARNING
    ]
