"""make run's and make cluster's launchers as the tests run them: `python -m devtools.run_dev` or
`devtools.cluster` in a subprocess, on free ports and private folders, with every process
they started found and stopped whatever happens."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from devtools.embedded_pg import EmbeddedPostgres, free_port
from devtools.launch import ROOT, health_status

DEMO_LINE = re.compile(r"^Demo admin: (\S+) / (\S+)$", re.MULTILINE)


@dataclass
class Launcher:
    """A running launcher: its process, its output so far, and what it started."""

    process: subprocess.Popen
    log: Path
    env: dict[str, str]
    data_dir: Path
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def port(self) -> int:
        """Return the port the launcher serves on (PORT)."""
        return int(self.env["PORT"])

    def output(self) -> str:
        """Return everything the launcher and its children printed so far."""
        return self.log.read_text(errors="replace")

    def demo_login(self) -> tuple[str, str]:
        """Return the demo admin's email and password from the printed `Demo admin:` line."""
        match = DEMO_LINE.search(self.output())
        assert match, self.output()[-3000:]
        return match.group(1), match.group(2)

    def descendants(self) -> dict[int, psutil.Process]:
        """Return every descendant of the launcher seen so far, by pid (psutil knows each by its start time too)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)
        return self.seen

    def postmaster(self) -> psutil.Process:
        """Return the PostgreSQL server it started (not its descendant: pg_ctl detaches it)."""
        return psutil.Process(int((self.data_dir / "data" / "postmaster.pid").read_text().split()[0]))


def gone(process: psutil.Process) -> bool:
    """Return True when the process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextlib.contextmanager
def run_launcher(
    module: str, data_dir: Path, log: Path, extra_env: Mapping[str, str], timeout: float = 60
) -> Iterator[Launcher]:
    """Run `python -m module` until it has printed its `Demo admin:` line and serves; stop it and all it started after.

    The launcher gets DEV_DATA_DIR (a folder the tests share, so the demo data is seeded
    once), free ports for PORT and DEV_DB_PORT, and `extra_env`; its output goes to `log`.
    """
    env = {
        **os.environ,
        "DEV_DATA_DIR": str(data_dir),
        "DEV_DB_PORT": str(free_port()),
        "PORT": str(free_port()),
        **extra_env,
    }
    env.pop("APP_ENV", None)  # the launchers set dev themselves
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    launcher = Launcher(process, log, env, data_dir)
    try:
        deadline = time.monotonic() + timeout
        while not DEMO_LINE.search(launcher.output()):
            assert process.poll() is None, f"{module} exited with {process.returncode}:\n{launcher.output()[-3000:]}"
            assert time.monotonic() < deadline, f"{module} printed no demo login in time:\n{launcher.output()[-3000:]}"
            time.sleep(0.1)
        while health_status(f"http://127.0.0.1:{launcher.port}") != 200:
            assert time.monotonic() < deadline, f"{module} does not serve:\n{launcher.output()[-3000:]}"
            time.sleep(0.1)
        launcher.descendants()
        yield launcher
    finally:
        _stop_whatever_is_left(launcher)


def _stop_whatever_is_left(launcher: Launcher) -> None:
    """After a failed test: stop the launcher, then kill what it left, the database included."""
    if launcher.process.poll() is None:
        launcher.descendants()
        launcher.process.send_signal(signal.SIGTERM)
        try:
            launcher.process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            launcher.process.kill()
            launcher.process.wait()
    for child in launcher.seen.values():
        # psutil refuses a pid that now belongs to another process (it checks the start time).
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    server = EmbeddedPostgres(launcher.data_dir / "data", port=int(launcher.env["DEV_DB_PORT"]))
    server.stop("immediate")
