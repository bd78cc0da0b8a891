"""Run jobs: claim a slot in PostgreSQL, run the function, record how it ended.

However many schedulers run (one per host), each slot of a job runs once: the claim is
one statement on the slot's row (models/job_runs.py). A claim is a lease of the job's
timeout: a run whose host dies is taken over by another scheduler once the lease ends,
and a run that outlives it cannot record its end any more (the row carries the new
attempt number). A failed run is recorded with its error and retried after its job's
backoff; a run started while a slot is due and already claimed waits for the next one.

`Scheduler.run()` is the long-running loop of `flask jobs run`: it polls every
JOBS_POLL_SECONDS, runs what it claimed in its own thread (the main one), one run at a
time, and stops when its `stopping` event is set, after the run in progress. `abandon()`
(a second SIGTERM or SIGINT) ends that run at its next Python instruction instead: its
transaction rolls back, and the slot is marked failed for another scheduler to retry at
once.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
from flask import Flask, current_app

from ..models import job_runs
from ..models.database import DatabaseUnavailable, close_pool
from .registry import JOBS, Job, RunInfo, _current

logger = logging.getLogger(__name__)

# Errors are kept whole in the logs; the row keeps this much of the message.
ERROR_LENGTH = 2000


class Abandoned(BaseException):
    """Raised inside a run its scheduler was told to stop at once; rolls back what the run had open."""


@dataclass(frozen=True)
class Outcome:
    """How one claimed run ended: succeeded, failed or abandoned, with its summary or error."""

    job: str
    slot_at: datetime
    attempt: int
    outcome: str
    summary: dict[str, Any] | None = None
    error: str | None = None
    recorded: bool = True


def runner_id() -> str:
    """Return this process's name in job_runs.claimed_by: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _summary(value: Mapping[str, Any] | None) -> dict[str, Any]:
    # What the job returned, as JSON can store it (a date or a Decimal becomes its text), so
    # recording it can never fail after the work is done.
    return json.loads(json.dumps(dict(value or {}), default=str))


def execute(job: Job, claim: Mapping[str, Any]) -> Outcome:
    """Run a claimed slot of `job` inside the app context and record its end; return how it ended.

    Raises Abandoned (after recording it) when the scheduler is told to stop at once.
    """
    slot_at, attempt = claim["slot_at"], claim["attempt"]
    settings = current_app.config["SETTINGS"]
    info = RunInfo(job, slot_at, attempt, time.monotonic() + job.timeout)
    token = _current.set(info)
    started = time.perf_counter()
    logger.debug("job %s: running slot %s (attempt %s)", job.name, slot_at.isoformat(), attempt)
    try:
        summary = _summary(job.function())
    except Abandoned:
        job_runs.record_failure(job.name, slot_at, attempt, "abandoned: its scheduler was stopped", 0, "abandoned")
        logger.warning("job %s: abandoned slot %s; another scheduler retries it", job.name, slot_at.isoformat())
        raise
    except Exception as exc:  # the job's own failure, whatever it is: recorded and retried, never fatal
        error = f"{type(exc).__name__}: {exc}".strip()[:ERROR_LENGTH]
        retry_in = job.backoff(attempt)
        logger.exception("job %s: slot %s failed (attempt %s), retry in %g s", job.name, slot_at, attempt, retry_in)
        recorded = job_runs.record_failure(job.name, slot_at, attempt, error, retry_in)
        return Outcome(job.name, slot_at, attempt, "failed", error=error, recorded=recorded)
    finally:
        _current.reset(token)
    recorded = job_runs.record_success(job.name, slot_at, attempt, summary, settings.jobs_history_days)
    seconds = time.perf_counter() - started
    if recorded:
        logger.info("job %s: slot %s succeeded in %.3f s: %s", job.name, slot_at.isoformat(), seconds, summary)
    else:
        logger.warning(
            "job %s: slot %s ended after %.3f s, past its %g s timeout; another scheduler had taken it over",
            job.name,
            slot_at.isoformat(),
            seconds,
            job.timeout,
        )
    return Outcome(job.name, slot_at, attempt, "succeeded", summary=summary, recorded=recorded)


def run_due(job: Job, by: str, manual: bool = False) -> Outcome | None:
    """Claim and run the job's current slot (manual: a slot of this moment); None when it is not ours to run."""
    every = job.period(current_app.config["SETTINGS"])
    claim = job_runs.claim(job.name, every, job.offset, job.timeout, by, manual)
    if claim is None:
        return None
    if claim["took_over"]:
        logger.warning("job %s: took slot %s over, its previous run's lease ended", job.name, claim["slot_at"])
    return execute(job, claim)


class Scheduler:
    """Polls the declared jobs and runs each due slot it claims; one per host, any number per cluster."""

    def __init__(self, app: Flask, jobs: Iterable[Job] | None = None, poll: float | None = None) -> None:
        self.app = app
        self.jobs = list(JOBS.values() if jobs is None else jobs)
        self.poll = app.config["SETTINGS"].jobs_poll_seconds if poll is None else poll
        self.id = runner_id()
        self.stopping = threading.Event()
        self._running: Job | None = None
        self._failing = False

    @property
    def running(self) -> Job | None:
        """Return the job being run now, or None between runs."""
        return self._running

    def run(self) -> None:
        """Poll and run until `stopping` is set, then close the pool; Abandoned ends it after recording the run."""
        logger.info(
            "scheduler %s: %s jobs (%s), polling every %g s",
            self.id,
            len(self.jobs),
            ", ".join(job.name for job in self.jobs),
            self.poll,
        )
        try:
            with self.app.app_context():
                while not self.stopping.is_set():
                    self.tick()
                    self.stopping.wait(self.poll)
        finally:
            close_pool(self.app)
            logger.info("scheduler %s: stopped", self.id)

    def tick(self) -> list[Outcome]:
        """Claim and run every job due now, in random order (so hosts spread the work); return what ran."""
        ran = []
        for job in random.sample(self.jobs, len(self.jobs)):
            if self.stopping.is_set():
                break
            try:
                self._running = job
                outcome = run_due(job, self.id)
            except (DatabaseUnavailable, psycopg2.Error) as exc:
                # The claim or the record could not be written: the database is away, or not
                # migrated. The lease covers a run whose end went unrecorded.
                if not self._failing:
                    logger.warning("scheduler %s: cannot reach the jobs' tables: %s", self.id, str(exc).strip())
                self._failing = True
                break
            finally:
                self._running = None
            if self._failing:
                logger.info("scheduler %s: the jobs' tables answer again", self.id)
                self._failing = False
            if outcome is not None:
                ran.append(outcome)
        return ran
