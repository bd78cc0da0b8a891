"""wrk as the load generator: one Lua script for every app and scenario, one JSON line per run.

    wrk -t1 -cC -dDs --timeout Ts -s bench/wrk/bench.lua http://127.0.0.1:PORT

One wrk thread: on 2 cores every core wrk takes is one the servers lose, and one epoll
thread drives 256 connections far faster than any app here answers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devtools.debian import WRK, ProgramUnavailable

from . import procs
from .settings import BENCH_DIR, ROOT

logger = logging.getLogger("bench")

LUA_SCRIPT = BENCH_DIR / "wrk" / "bench.lua"
RESULT_PREFIX = "BENCH_RESULT "


class WrkMissing(RuntimeError):
    """wrk is not installed and the harness may not install it."""


def ensure_wrk() -> str:
    """Return wrk's path, installing Debian's package first when missing and running as root (devtools/debian.py).

    Raises WrkMissing with the sentence saying why, and what to run, otherwise.
    """
    try:
        return WRK.ensure()
    except ProgramUnavailable as exc:
        raise WrkMissing(str(exc)) from exc


def wrk_version(wrk: str) -> str:
    """Return wrk's version line."""
    result = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).splitlines()[0].strip() if (result.stdout or result.stderr) else "unknown"


@dataclass
class Point:
    """One measured wrk run: an app, a scenario, a connection count, a round."""

    scenario: str
    app: str
    connections: int
    round: int
    seq: int
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    status: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0
    conflicts_409: int = 0
    started_at: float = 0.0
    failed: str | None = None
    # CPU microseconds per request while wrk ran: app (its gunicorn tree), database, load (wrk), pooler (PgBouncer)
    cpu_us: dict[str, float] = field(default_factory=dict)
    # Behind PgBouncer: transactions it served, and how long clients waited for a server connection
    pgbouncer: dict[str, float] = field(default_factory=dict)

    @property
    def socket_error_count(self) -> int:
        """Return connect + read + write + timeout errors."""
        return sum(self.socket_errors.values())

    def as_dict(self) -> dict[str, Any]:
        """Return the point as JSON-ready values."""
        return asdict(self)


def wrk_argv(wrk: str, url: str, connections: int, duration: int, timeout: int) -> list[str]:
    """Return the wrk command line for one run."""
    return [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={timeout}s",
        "-s",
        str(LUA_SCRIPT.relative_to(ROOT)),
        url,
    ]


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    duration: int,
    timeout: int,
    lua_env: dict[str, str],
) -> dict[str, Any]:
    """Run wrk once and return the script's BENCH_RESULT as a dict (raises RuntimeError on failure)."""
    argv = wrk_argv(wrk, url, connections, duration, timeout)
    result = procs.run(argv, env={**os.environ, **lua_env}, cwd=ROOT, timeout=duration + timeout + 60)
    for line in result.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"wrk gave no result (exit {result.returncode}):\n{result.stdout[-2000:]}")


def measure(
    wrk: str,
    url: str,
    point: Point,
    *,
    duration: int,
    timeout: int,
    lua_env: dict[str, str],
) -> Point:
    """Fill `point` from one wrk run against `url`."""
    point.started_at = time.time()
    raw = run_wrk(wrk, url, connections=point.connections, duration=duration, timeout=timeout, lua_env=lua_env)
    point.requests = raw["requests"]
    point.duration_s = raw["duration_us"] / 1e6
    point.rps = point.requests / point.duration_s if point.duration_s else 0.0
    latency = raw["latency_us"]
    point.p50_ms = latency["p50"] / 1000
    point.p90_ms = latency["p90"] / 1000
    point.p99_ms = latency["p99"] / 1000
    point.max_ms = latency["max"] / 1000
    point.status = {str(code): n for code, n in sorted(raw["status"].items())}
    errors = raw["errors"]
    point.socket_errors = {kind: errors[kind] for kind in ("connect", "read", "write", "timeout")}
    point.non_2xx = sum(n for code, n in point.status.items() if not code.startswith("2"))
    point.conflicts_409 = point.status.get("409", 0)
    return point


def write_params(path: Path, params: dict[str, Any]) -> None:
    """Write the Lua file the script loads (BENCH_PARAMS): a table of the run's data."""

    def lua(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, str):
            return json.dumps(value)  # a JSON string is a valid Lua string literal for ASCII
        if isinstance(value, (list, tuple)):
            return "{" + ", ".join(lua(item) for item in value) + "}"
        raise TypeError(f"cannot write {type(value).__name__} to Lua")

    lines = ["-- Written by bench/harness.py for one run; bench/wrk/bench.lua loads it.", "return {"]
    lines += [f"  {key} = {lua(value)}," for key, value in params.items()]
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")
