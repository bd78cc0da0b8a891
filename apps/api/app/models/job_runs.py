"""SQL for scheduled jobs: claiming a slot, recording its end, and each job's figures.

Every step is one statement in autocommit, so nothing outlives a transaction (PgBouncer
transaction mode is fine) and a claim is atomic: INSERT ... ON CONFLICT DO UPDATE ... WHERE
locks the slot's row, and of any number of schedulers claiming it at once exactly one
inserts it or finds it claimable (a failed run due for a retry, or a running one whose
lease ended); the others change nothing. Times are the database's, so hosts whose clocks
disagree still agree on the slots.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from .database import execute_query, execute_write

OUTCOMES = ("succeeded", "failed", "expired", "abandoned")


def _slot_of(moment: str, every: str, offset: str) -> str:
    # The one home of the slot arithmetic: the start of the slot of a job (every, offset
    # seconds, aligned to the Unix epoch) that holds `moment` (SQL expressions all three).
    return f"to_timestamp(floor((extract(epoch FROM {moment})::float8 - {offset}) / {every}) * {every} + {offset})"


def _count(outcome: str) -> str:
    # jobs.runs with one more run of `outcome` (an SQL expression).
    return f"j.runs || jsonb_build_object({outcome}::text, coalesce((j.runs ->> {outcome})::bigint, 0) + 1)"


def _claimable(row: str) -> str:
    # The one home of when a slot's row may be claimed again: its run's lease ended, or its
    # failed run is due for a retry.
    return (
        f"(({row}.status = 'running' AND {row}.claimed_until < now())"
        f" OR ({row}.status = 'failed' AND {row}.retry_at <= now()))"
    )


_CLAIM = f"""
WITH slot AS (
    SELECT CASE WHEN %(manual)s THEN now() ELSE {_slot_of("now()", "%(every)s", "%(offset)s")} END AS at
),
claimed AS (
    INSERT INTO job_runs AS r (job, slot_at, status, attempt, claimed_by, claimed_until)
    SELECT %(job)s, slot.at, 'running', 1, %(by)s, now() + make_interval(secs => %(timeout)s) FROM slot
    -- Only a read while the slot is taken (every poll of every scheduler but one): the
    -- ON CONFLICT path below locks the row even when it changes nothing.
    WHERE NOT EXISTS (
        SELECT 1 FROM job_runs o WHERE o.job = %(job)s AND o.slot_at = slot.at AND NOT {_claimable("o")})
    ON CONFLICT (job, slot_at) DO UPDATE SET
        status = 'running', attempt = r.attempt + 1, claimed_by = excluded.claimed_by,
        claimed_until = excluded.claimed_until, started_at = now(), finished_at = NULL, retry_at = NULL,
        error = CASE WHEN r.status = 'running'
            THEN 'the run on ' || r.claimed_by || ' did not end within its timeout' ELSE r.error END,
        failed_at = CASE WHEN r.status = 'running' THEN now() ELSE r.failed_at END
    WHERE {_claimable("r")}
    RETURNING slot_at, attempt, coalesce(failed_at = now(), false) AS took_over, error
),
known AS (
    INSERT INTO jobs AS j (name, first_slot_at, runs, last_failure_at, last_error)
    SELECT %(job)s, slot_at, CASE WHEN took_over THEN '{{"expired": 1}}'::jsonb ELSE '{{}}' END,
        CASE WHEN took_over THEN now() END, CASE WHEN took_over THEN error END
    FROM claimed
    ON CONFLICT (name) DO UPDATE SET
        runs = {_count("'expired'")}, last_failure_at = excluded.last_failure_at, last_error = excluded.last_error
    WHERE excluded.last_failure_at IS NOT NULL
)
SELECT slot_at, attempt, took_over FROM claimed
"""


def claim(name: str, every: float, offset: float, timeout: float, by: str, manual: bool = False) -> dict | None:
    """Claim the job's current slot (manual: a slot of its own at this moment) for `timeout` seconds.

    Returns {slot_at, attempt, took_over} when this caller now holds the slot: a new slot, a
    failed one due for its retry, or one whose holder's lease ended (took_over). Returns None
    when the slot ran already, is running, or waits for its retry.
    """
    return execute_write(
        _CLAIM,
        {"job": name, "every": every, "offset": offset, "timeout": timeout, "by": by, "manual": manual},
    )


_HELD = "job = %(job)s AND slot_at = %(slot_at)s AND attempt = %(attempt)s AND status = 'running'"

_SUCCEEDED = f"""
WITH done AS (
    UPDATE job_runs SET status = 'succeeded', finished_at = now(), summary = %(summary)s
    WHERE {_HELD}
    RETURNING job, slot_at, finished_at, summary
),
counted AS (
    UPDATE jobs j SET
        last_success_slot_at = greatest(j.last_success_slot_at, done.slot_at),
        last_success_at = done.finished_at, last_summary = done.summary, runs = {_count("'succeeded'")}
    FROM done WHERE j.name = done.job
),
pruned AS (
    DELETE FROM job_runs
    WHERE job = %(job)s AND slot_at < now() - make_interval(days => %(keep_days)s) AND status <> 'running'
        AND EXISTS (SELECT 1 FROM done)
)
SELECT count(*)::int AS recorded FROM done
"""


def record_success(name: str, slot_at: datetime, attempt: int, summary: dict[str, Any], keep_days: int) -> bool:
    """Mark the held run succeeded with its summary; prune the job's runs older than `keep_days`.

    Returns False when the run no longer held its slot (its lease ended and another
    scheduler took it over): nothing is recorded then.
    """
    row = execute_write(
        _SUCCEEDED,
        {"job": name, "slot_at": slot_at, "attempt": attempt, "summary": Json(summary), "keep_days": keep_days},
    )
    return row["recorded"] == 1


_FAILED = f"""
WITH done AS (
    UPDATE job_runs SET status = 'failed', finished_at = now(), error = %(error)s, failed_at = now(),
        retry_at = now() + make_interval(secs => %(retry_in)s)
    WHERE {_HELD}
    RETURNING job, failed_at, error
),
counted AS (
    UPDATE jobs j SET last_failure_at = done.failed_at, last_error = done.error, runs = {_count("%(outcome)s")}
    FROM done WHERE j.name = done.job
)
SELECT count(*)::int AS recorded FROM done
"""


def record_failure(
    name: str, slot_at: datetime, attempt: int, error: str, retry_in: float, outcome: str = "failed"
) -> bool:
    """Mark the held run failed with its error, to be retried in `retry_in` seconds; count it as `outcome`.

    `outcome` is failed, or abandoned for a run its scheduler gave up when told to stop.
    Returns False when the run no longer held its slot.
    """
    row = execute_write(
        _FAILED,
        {"job": name, "slot_at": slot_at, "attempt": attempt, "error": error, "retry_in": retry_in, "outcome": outcome},
    )
    return row["recorded"] == 1


def job_figures(
    names: list[str], every: list[float], offsets: list[float], *, timeout: float | None = None
) -> list[dict[str, Any]]:
    """Return each declared job's figures, in the order given: last success and failure, runs, due time, lag.

    next_due_at is the start of the earliest slot not yet succeeded (the current one for a job
    that never ran); lag_seconds how long ago that was (0 while in the future); missed_slots
    how many whole slots have passed since without a success (0 for a job that never ran).
    """
    due_from = (
        f"CASE WHEN j.last_success_slot_at IS NOT NULL"
        f" THEN {_slot_of('j.last_success_slot_at', 'd.every', 'd.off')} + make_interval(secs => d.every)"
        f" ELSE {_slot_of('j.first_slot_at', 'd.every', 'd.off')} END"
    )
    return execute_query(
        f"""
        WITH declared AS (
            SELECT * FROM unnest(%(names)s::text[], %(every)s::float8[], %(offsets)s::float8[])
                WITH ORDINALITY AS d(name, every, off, position)
        ),
        figures AS (
            SELECT d.name, d.every, d.position, j.last_success_at, j.last_success_slot_at, j.last_summary,
                j.last_failure_at, j.last_error, coalesce(j.runs, '{{}}') AS runs, j.name IS NOT NULL AS has_run,
                coalesce({due_from}, {_slot_of("now()", "d.every", "d.off")}) AS next_due_at,
                (SELECT claimed_by FROM job_runs r WHERE r.job = d.name AND r.status = 'running'
                    ORDER BY slot_at DESC LIMIT 1) AS running_on
            FROM declared d LEFT JOIN jobs j ON j.name = d.name
        )
        SELECT name, last_success_at, last_success_slot_at, last_summary, last_failure_at, last_error, runs,
            has_run, next_due_at, running_on,
            greatest(0, extract(epoch FROM now() - next_due_at))::float8 AS lag_seconds,
            CASE WHEN has_run THEN greatest(0, floor(extract(epoch FROM now() - next_due_at) / every))::int
                ELSE 0 END AS missed_slots
        FROM figures ORDER BY position
        """,
        {"names": names, "every": every, "offsets": offsets},
        timeout=timeout,
    )


def slot_runs(name: str) -> list[dict[str, Any]]:
    """Return the job's recorded runs, oldest slot first (tests and `jobs history`)."""
    return execute_query(
        "SELECT slot_at, status, attempt, claimed_by, started_at, finished_at, summary, error"
        " FROM job_runs WHERE job = %s ORDER BY slot_at",
        (name,),
    )
