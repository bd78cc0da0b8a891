"""Jobs declared in code: a name, a schedule, a function and a timeout, kept in one registry.

    from apps.api.app.jobs.registry import job

    @job("purge_rate_limits", every=3600, timeout=60)
    def purge_rate_limits() -> dict[str, int]:
        return {"deleted": ...}

The function takes no arguments, runs inside the app context of the scheduler (or of
`jobs run-once`), and returns a small dict of counts, recorded with the run. While it
runs, `current_run()` says which slot and attempt it is and how much of its lease is left.

A schedule is `every` seconds, in slots aligned to the Unix epoch (UTC) and shifted by
`offset`: every=86400 is each UTC day at 00:00, every=86400 with offset=6 * 3600 each day
at 06:00, every=600 at :00, :10, ... . Each slot runs once across all schedulers. `every`
may also name a setting (every="DASHBOARD_REFRESH_SECONDS"): the period is then that
setting's value in the app that runs or reports the job (`Job.period(settings)`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..backoff import doubling_delay
from ..config import SETTING_NAMES, Settings

Summary = Mapping[str, Any]
JobFunction = Callable[[], Summary | None]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# A failed run is retried after retry_base seconds, doubling with each attempt, at most retry_max.
DEFAULT_RETRY_BASE = 5.0
DEFAULT_RETRY_MAX = 300.0


@dataclass(frozen=True)
class Job:
    """One job: what runs, how often, and how long a run may hold its slot (its lease)."""

    name: str
    every: float | str
    function: JobFunction
    timeout: float
    offset: float = 0.0
    retry_base: float = DEFAULT_RETRY_BASE
    retry_max: float = DEFAULT_RETRY_MAX

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"job name {self.name!r} must be lowercase letters, digits and _, starting with a letter")
        if isinstance(self.every, str):
            if self.every not in SETTING_NAMES:
                raise ValueError(f"job {self.name}: every must be seconds or a setting's name, got {self.every!r}")
        elif not self.every > 0:
            raise ValueError(f"job {self.name}: every must be greater than 0 seconds, got {self.every}")
        if not self.timeout > 0:
            raise ValueError(f"job {self.name}: timeout must be greater than 0 seconds, got {self.timeout}")
        if not 0 <= self.offset < (math.inf if isinstance(self.every, str) else self.every):
            raise ValueError(
                f"job {self.name}: offset must be at least 0 and below every ({self.every}), got {self.offset}"
            )
        if not 0 < self.retry_base <= self.retry_max:
            raise ValueError(f"job {self.name}: retry_base must be greater than 0 and at most retry_max")

    def backoff(self, attempt: int) -> float:
        """Return the seconds to wait before retrying after failed attempt number `attempt` (1, 2, ...)."""
        return doubling_delay(self.retry_base, self.retry_max, attempt)

    def period(self, settings: Settings) -> float:
        """Return the seconds between slots: `every`, or the value of the setting it names."""
        if isinstance(self.every, str):
            return float(getattr(settings, self.every.lower()))
        return float(self.every)


JOBS: dict[str, Job] = {}


def register(declared: Job) -> Job:
    """Add a job to the registry; raise ValueError when its name is taken by another function."""
    known = JOBS.get(declared.name)
    if known is not None and known.function is not declared.function:
        raise ValueError(f"job {declared.name} is declared twice")
    JOBS[declared.name] = declared
    return declared


def job(
    name: str,
    *,
    every: float | str,
    timeout: float,
    offset: float = 0.0,
    retry_base: float = DEFAULT_RETRY_BASE,
    retry_max: float = DEFAULT_RETRY_MAX,
) -> Callable[[JobFunction], JobFunction]:
    """Declare the decorated function as job `name` (see the module's docstring); return it unchanged."""

    def declare(function: JobFunction) -> JobFunction:
        register(Job(name, every, function, timeout, offset, retry_base, retry_max))
        return function

    return declare


@dataclass(frozen=True)
class RunInfo:
    """The run in progress: its job, slot, attempt, and when its lease ends (monotonic clock)."""

    job: Job
    slot_at: datetime
    attempt: int
    lease_ends: float

    def lease_left(self) -> float:
        """Return the seconds left before another scheduler may take this run over (negative: past)."""
        return self.lease_ends - time.monotonic()


class LeaseExpired(RuntimeError):
    """The run has outlived its timeout: another scheduler may have taken its slot over."""


_current: ContextVar[RunInfo | None] = ContextVar("rentals_job_run", default=None)


def current_run() -> RunInfo | None:
    """Return the run in progress in this context, or None outside a job."""
    return _current.get()


def check_lease() -> None:
    """Raise LeaseExpired when the running job's lease has ended; call between batches. No-op outside a job."""
    run = _current.get()
    if run is not None and run.lease_left() <= 0:
        raise LeaseExpired(
            f"job {run.job.name} ran past its timeout of {run.job.timeout:g} s; its slot may have been taken over"
        )
