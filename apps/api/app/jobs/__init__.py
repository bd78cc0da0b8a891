"""Work that runs without a request: jobs declared in code, each slot run once across hosts.

- registry.py: `Job`, the `@job` decorator and the registry (how to declare one);
- definitions.py: the jobs the business needs;
- runner.py: claim a slot in PostgreSQL, run it, record it; the scheduler loop;
- status.py: each job's figures for /api/health/jobs, /api/health/db and /metrics.
"""

from __future__ import annotations

from . import definitions
from .registry import JOBS, Job, LeaseExpired, RunInfo, check_lease, current_run, job, register

__all__ = ["JOBS", "Job", "LeaseExpired", "RunInfo", "check_lease", "current_run", "definitions", "job", "register"]
