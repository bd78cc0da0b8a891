"""What GET /api/dashboard costs the database, per app and worker count, from bench runs' results.json.

    .venv/bin/python -m bench.dashboard_cost bench/results/<run>/results.json [more runs...]

Each point of a run records the PostgreSQL server's CPU per request (bench/cpu.py: the
postmaster and every backend, over the point's fixed BENCH_DURATION window). Multiplied by
the point's requests, that is the database CPU the app made the server spend in that window,
whatever it was spent on: the dashboard's statement (per worker with the old per-worker
cache; once per DASHBOARD_REFRESH_SECONDS with the snapshot) and the snapshot reads. Prints a
Markdown table: per run (workers) and app, the median req/s and the median database CPU
seconds per window, over every point of the dashboard scenario.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SCENARIO = "dashboard"


def rows(path: Path) -> list[tuple[int, str, int, float, float, float]]:
    """Return (workers, app, points, median req/s, median database CPU s per window, window s) per app of one run."""
    results = json.loads(path.read_text())
    workers = results["meta"]["settings"]["workers"]
    by_app: dict[str, list[tuple[float, float, float]]] = {}
    for point in results["points"]:
        if point["scenario"] != SCENARIO or point.get("failed") or not point.get("cpu_us"):
            continue
        database_s = point["cpu_us"]["database"] * point["requests"] / 1e6
        by_app.setdefault(point["app"], []).append((point["rps"], database_s, point["duration_s"]))
    return [
        (
            workers,
            app,
            len(points),
            statistics.median(p[0] for p in points),
            statistics.median(p[1] for p in points),
            statistics.median(p[2] for p in points),
        )
        for app, points in sorted(by_app.items())
    ]


def main(paths: list[str]) -> int:
    """Print the table for the given results.json files; return 0."""
    print("| Workers | App | Points | req/s (median) | database CPU s per window (median) | window s |")
    print("|---:|---|---:|---:|---:|---:|")
    for path in paths:
        for workers, app, count, rps, database_s, window in rows(Path(path)):
            print(f"| {workers} | {app} | {count} | {rps:.0f} | {database_s:.3f} | {window:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
