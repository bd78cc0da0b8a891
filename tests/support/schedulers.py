"""Scheduler processes as the tests run them: `flask jobs run` on tests.support.job_app in
subprocesses, each with its own log file, stopped (then killed) whatever happens."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import app_config, wait_until

ROOT = Path(__file__).resolve().parents[2]
STARTED_LINE = "polling every"


@dataclass
class SchedulerProcess:
    """One running `flask jobs run` and the file it logs to."""

    process: subprocess.Popen
    log: Path
    signalled: bool = False

    def terminate(self) -> None:
        """Send SIGTERM once: a second would abandon the run in progress, or find Python exiting."""
        if not self.signalled and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.signalled = True

    @property
    def pid(self) -> int:
        """Return its process id."""
        return self.process.pid

    def output(self) -> str:
        """Return what it logged so far."""
        return self.log.read_text(errors="replace")

    def started(self) -> bool:
        """Return True once its loop runs (it logged its jobs)."""
        return STARTED_LINE in self.output()


def stop(scheduler: SchedulerProcess, timeout: float = 15) -> int:
    """SIGTERM it and wait; kill it if it does not end in time. Return its exit code."""
    scheduler.terminate()
    try:
        return scheduler.process.wait(timeout=timeout)
    finally:
        if scheduler.process.poll() is None:
            scheduler.process.kill()
            scheduler.process.wait()


class Schedulers:
    """Scheduler processes of some jobs on one database; `add(n)` starts n more and waits until they poll."""

    def __init__(
        self, database_url: str, folder: Path, jobs: list[str], settings: Mapping[str, str] | None = None
    ) -> None:
        self.folder = folder
        self.env = {
            **os.environ,
            **app_config(database_url, JOBS_POLL_SECONDS="0.1", LOG_LEVEL="info", **(settings or {})),
            "PYTHONUNBUFFERED": "1",
        }
        self.command = [sys.executable, "-m", "flask", "--app", "tests.support.job_app", "jobs", "run"]
        for name in jobs:
            self.command += ["--only", name]
        self.running: list[SchedulerProcess] = []

    def add(self, count: int) -> list[SchedulerProcess]:
        """Start `count` more schedulers at once; return them once each polls (fail if one exits first)."""
        added = []
        for _ in range(count):
            log = self.folder / f"scheduler-{len(self.running)}.log"
            with log.open("w") as out:
                process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            self.running.append(SchedulerProcess(process, log))
            added.append(self.running[-1])
        for scheduler in added:
            assert wait_until(lambda s=scheduler: s.started() or s.process.poll() is not None, timeout=60)
            assert scheduler.process.poll() is None, scheduler.output()[-3000:]
        return added

    def stop_all(self) -> list[int]:
        """Stop every scheduler (SIGTERM to all first, so they stop together); return their exit codes."""
        for scheduler in self.running:
            scheduler.terminate()
        return [stop(scheduler) for scheduler in self.running]


@contextlib.contextmanager
def schedulers(
    database_url: str, folder: Path, jobs: list[str], settings: Mapping[str, str] | None = None
) -> Iterator[Schedulers]:
    """Yield a Schedulers group (none started yet); stop every process it started after, whatever happens."""
    group = Schedulers(database_url, folder, jobs, settings)
    try:
        yield group
    finally:
        group.stop_all()
