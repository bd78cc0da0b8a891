"""Profile an app's hot path under load with py-spy, and say where its Python time goes.

    profile_app(...) samples one running app; write_markdown(...) writes PROFILE.md
    (make bench-profile runs bench/profile.py; make bench profiles via bench/harness.py)

While wrk drives one scenario, `py-spy record --subprocesses --gil` samples every gunicorn
worker. --gil keeps only the thread holding the GIL, so the samples are the Python time
that competes for the 2 cores; threads waiting on the database or the socket are left out.
Each sample is charged to the layer of its innermost recognised frame (the pool, the
database helpers, auth, JSON, logging, metrics, Flask/Werkzeug, gunicorn ...); generic
stdlib frames (threading, socket, re ...) are charged to their caller's layer. The summary
(PROFILE.md) gives each layer's share, an estimate of its time per request, and the
hottest functions; the raw stacks stay in bench/results/<run>/ for flamegraph tools.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import load, procs
from .settings import ROOT

logger = logging.getLogger("bench")

RATE = 200  # samples per second per process

# (layer, pattern on the frame's file), innermost match wins; first matching pattern names it.
LAYERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("pool (apps/api/app/pool/)", r"apps/api/app/pool/|apps/api/app/compat/psycopg2_pool\.py"),
        # Where the pool lived until the layering issue; kept so earlier results render as they did.
        ("pool (apps/api/app/models/pool.py)", r"apps/api/app/models/pool\.py"),
        ("database helpers (models/database.py) + psycopg2", r"apps/api/app/models/database\.py|psycopg2/"),
        ("metrics (prometheus_client, app metrics)", r"prometheus_client/|apps/api/app/metrics"),
        ("logging (stdlib logging, app log setup)", r"(^|/)logging/|apps/api/app/logs\.py|gunicorn/glogging\.py"),
        ("auth (bearer token checks)", r"apps/api/app/auth\.py|itsdangerous/|(^|/)hmac\.py|(^|/)hashlib"),
        ("JSON (encode/decode, serialization.py)", r"(^|/)json/|flask/json/|apps/api/app/serialization\.py"),
        ("app code (routes, models, errors, config)", r"apps/api/"),
        ("peer app code", r"bench/peers/"),
        ("SQLAlchemy", r"sqlalchemy/"),
        ("psycopg 3 and psycopg_pool", r"psycopg/|psycopg_pool/"),
        ("Flask and Werkzeug (routing, request, response)", r"flask/|werkzeug/|blinker/"),
        ("gunicorn (HTTP parsing, socket I/O, gthread)", r"gunicorn/"),
    )
)
OTHER = "other (stdlib frames with no recognised caller)"
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?):(?P<line>\d+)\)$")


class ProfilerMissing(RuntimeError):
    """py-spy is not installed in this environment."""


def py_spy() -> str:
    """Return py-spy's path (installed by bench/requirements.txt)."""
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("py-spy")
    if not found:
        raise ProfilerMissing("py-spy is missing; install bench/requirements.txt into .venv (make bench does)")
    return found


def _frames(line: str) -> tuple[list[tuple[str, str]], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    frames = []
    for part in stack.split(";"):
        match = FRAME.match(part)
        if match:  # skips the "process N:..." frames of --subprocesses
            frames.append((match["func"], match["file"]))
    return frames, int(count)


def _layer(frames: list[tuple[str, str]]) -> str:
    for _, file in reversed(frames):
        for name, pattern in LAYERS:
            if pattern.search(file):
                return name
    return OTHER


def summarize(raw_path: Path, *, seconds: float, requests: int) -> dict[str, Any]:
    """Read py-spy's raw (collapsed) stacks; return layers, hottest functions and per-request estimates."""
    layers: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    inclusive_own: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        if not frames:
            continue
        total += count
        layers[_layer(frames)] += count
        func, file = frames[-1]
        leaf[f"{func} ({file})"] += count
        seen = set()
        for func, file in frames:
            if "apps/api/" in file or "bench/peers/" in file:
                key = f"{func} ({file})"
                if key not in seen:
                    seen.add(key)
                    inclusive_own[key] += count

    def per_request_us(samples: int) -> float | None:
        return round(samples / RATE / requests * 1e6, 1) if requests else None

    return {
        "samples": total,
        "rate": RATE,
        "seconds": seconds,
        "requests": requests,
        "gil_us_per_request": per_request_us(total),
        "layers": [
            {"layer": name, "samples": n, "share": round(n / total, 4) if total else 0, "us": per_request_us(n)}
            for name, n in layers.most_common()
        ],
        "hottest_leaf": [{"function": name, "share": round(n / total, 4)} for name, n in leaf.most_common(15)],
        "project_inclusive": [
            {"function": name, "share": round(n / total, 4)} for name, n in inclusive_own.most_common(15)
        ],
    }


def profile_app(
    wrk: str,
    running,
    lua_env: dict[str, str],
    *,
    scenario: str,
    connections: int,
    seconds: int,
    timeout: int,
    raw_path: Path,
) -> dict[str, Any]:
    """Drive `running` with wrk and sample it with py-spy meanwhile; return the summary."""
    spy = py_spy()
    lead = 2  # let the load settle before sampling
    result: dict[str, Any] = {}

    def drive() -> None:
        try:
            result["wrk"] = load.run_wrk(
                wrk, running.url, connections=connections, duration=seconds + 2 * lead, timeout=timeout, lua_env=lua_env
            )
        except RuntimeError as exc:
            result["error"] = str(exc)

    driver = threading.Thread(target=drive, name="bench-profile-load")
    driver.start()
    try:
        time.sleep(lead)
        argv = [
            spy,
            "record",
            "--pid",
            str(running.process.pid),
            "--subprocesses",
            "--gil",
            "--rate",
            str(RATE),
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "--output",
            str(raw_path),
        ]
        spied = procs.run(argv, env={"PATH": "/usr/bin:/bin"}, cwd=ROOT, timeout=seconds + 60)
        if spied.returncode != 0 or not raw_path.exists():
            raise RuntimeError(f"py-spy failed ({spied.returncode}): {spied.stdout[-1000:]}")
    finally:
        driver.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    raw = result["wrk"]
    rps = raw["requests"] / (raw["duration_us"] / 1e6)
    summary = summarize(raw_path, seconds=seconds, requests=round(rps * seconds))
    summary.update(
        {
            "app": running.spec.name,
            "label": running.spec.label,
            "scenario": scenario,
            "connections": connections,
            "rps_while_sampled": round(rps, 1),
            "raw": str(raw_path.relative_to(ROOT)) if raw_path.is_relative_to(ROOT) else str(raw_path),
            "command": " ".join(["py-spy", *argv[1:]]).replace(str(running.process.pid), "<gunicorn master pid>"),
        }
    )
    logger.info(
        "profiled %s on %s: %.0f req/s while sampled, %s GIL samples",
        running.spec.name,
        scenario,
        rps,
        summary["samples"],
    )
    return summary


def _pct(share: float) -> str:
    return f"{share * 100:.1f} %"


def compare(profiles: list[dict[str, Any]]) -> list[str]:
    """Return a table of the customer read's Python time per request, by layer, for every profiled app."""
    customer = [p for p in profiles if p["scenario"] == "customer"]
    if len(customer) < 2:
        return []
    layers = [name for name, _ in LAYERS] + [OTHER]
    by_app = {p["app"]: {row["layer"]: row["us"] or 0 for row in p["layers"]} for p in customer}
    present = [layer for layer in layers if any(by_app[p["app"]].get(layer) for p in customer)]
    header = ["Layer", *[f"{p['label']} (µs)" for p in customer]]
    lines = [
        "### The customer read, side by side: Python time per request by layer",
        "",
        "Estimates from the samples below (samples / rate / requests while sampled); compare the columns, "
        "not the absolute values, which py-spy's sampling itself inflates.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(customer),
    ]
    for layer in present:
        lines.append("| " + " | ".join([layer, *[f"{by_app[p['app']].get(layer, 0):.0f}" for p in customer]]) + " |")
    lines.append("| **total** | " + " | ".join(f"**{p['gil_us_per_request']:.0f}**" for p in customer) + " |")
    return [*lines, ""]


def render(profiles: list[dict[str, Any]]) -> str:
    """Return the Markdown of the profile summaries (PROFILE.md and the report's section)."""
    if not profiles:
        return "No profile was taken (BENCH_PROFILE_SECONDS=0, or py-spy failed: see the run's log).\n"
    lines = compare(profiles)
    for p in profiles:
        lines += [
            f"### {p['label']}: {p['scenario']} at {p['connections']} connections",
            "",
            f"{p['rps_while_sampled']:.0f} req/s while sampled for {p['seconds']} s; {p['samples']} samples of the "
            f"thread holding the GIL at {p['rate']} Hz per process; about **{p['gil_us_per_request']} µs of "
            "Python (GIL) time per request** in the workers. Raw stacks: `" + p["raw"] + "`.",
            "",
            "| Layer (innermost recognised frame) | Share | µs per request (est.) |",
            "|---|---:|---:|",
        ]
        lines += [f"| {row['layer']} | {_pct(row['share'])} | {row['us']} |" for row in p["layers"]]
        lines += ["", "Hottest functions (where the sampled frame was):", "", "| Function | Share |", "|---|---:|"]
        lines += [f"| `{row['function']}` | {_pct(row['share'])} |" for row in p["hottest_leaf"][:10]]
        if p["project_inclusive"]:
            lines += [
                "",
                "Project functions, inclusive (time in them and what they call):",
                "",
                "| Function | Share |",
                "|---|---:|",
            ]
            lines += [f"| `{row['function']}` | {_pct(row['share'])} |" for row in p["project_inclusive"][:10]]
        lines += ["", f"Command: `{p['command']}`", ""]
    return "\n".join(lines)


def write_markdown(profiles: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    """Write PROFILE.md: the summaries, and how they were taken."""
    header = [
        "# Rentals API: where the time goes under load (py-spy)",
        "",
        f"Run {meta.get('run_id')} on {meta.get('machine', {}).get('nproc')} cores "
        f"({meta.get('machine', {}).get('cpu_model')}), commit {meta.get('machine', {}).get('git_commit')}"
        f"{' (uncommitted changes)' if meta.get('machine', {}).get('git_dirty') else ''}. "
        + ("**Smoke run: not a final figure.**" if meta.get("settings", {}).get("quick") else ""),
        "",
        (__doc__ or "").split("\n\n", 2)[2].strip(),
        "",
    ]
    path.write_text("\n".join(header) + "\n" + render(profiles))
