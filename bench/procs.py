"""Child processes in their own process groups, always stopped: on success, error, Ctrl-C or SIGTERM.

Every server, wrk and py-spy the benchmark starts runs in a new session, so the terminal's
Ctrl-C reaches only the harness, which then stops them in order (apps before the database).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

logger = logging.getLogger("bench")


class Terminated(Exception):
    """The harness got SIGTERM or SIGHUP; raised so that every cleanup block runs."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into an exception for the duration of the block."""
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process's whole group; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def stop_process(process: subprocess.Popen, *, grace: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
    """Ask the process to stop with `sig`, wait up to `grace` seconds, then kill its group.

    Returns its exit code. Its children (gunicorn's workers) go with the group.
    """
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        logger.warning("pid %s did not stop within %.0f s; killing its process group", process.pid, grace)
    # Still running, so not reaped: its pid (the group's id) cannot have been reused.
    kill_group(process)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    return process.returncode


def start(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: IO | int | None = None,
    capture: bool = False,
) -> subprocess.Popen:
    """Start `command` in a new session; its output goes to `log` (a file), or a pipe when `capture`."""
    return subprocess.Popen(
        list(command),
        env=dict(env),
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else log,
        stderr=subprocess.STDOUT if (capture or log is not None) else None,
        text=True,
        start_new_session=True,
    )


def run(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
) -> subprocess.CompletedProcess:
    """Run `command` to its end in a new session; kill its group on timeout or interruption.

    Returns the CompletedProcess with stdout and stderr merged into stdout.
    """
    process = start(command, env=env, cwd=cwd, capture=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except BaseException:
        kill_group(process)
        process.wait()
        raise
    return subprocess.CompletedProcess(list(command), process.returncode, output, None)


def wait_until(check, *, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    """Call `check()` until it returns True; raise TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(interval)
