"""A run's results.json indexed for the report and the plots: medians, paired ratios, the best peer.

Paired ratios: at each (round, connections) the two apps ran back to back, so app A's
req/s over app B's at that same point is one ratio; the report gives the median and the
range of those ratios over the points from 16 to 256 connections, and per connection
count the median over rounds.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from .servers import APPS, PEERS

TARGET_HELLO = 0.65
TARGET_PEER = 1.15
TARGET_NULL = 12.0
TARGET_DEEP = 1.5
# Issue 15: the API under granian against FastAPI + asyncpg and against itself under gunicorn.
TARGET_GRANIAN_PEER = 1.0
TARGET_GRANIAN_GUNICORN = 1.4
LOW_C = 16  # ratios are judged from this many connections up
ERROR_FREE_KINDS = ("customer", "rentals_list", "rentals_deep", "dashboard")
# Behind PgBouncer: the API's own pool, and null mode (a connection to PgBouncer per use).
POOLED, POOLED_NULL = "api-pgbouncer", "api-pgbouncer-null"
# Ratios within this much of 1.00x are not told apart on 2 shared cores.
NOISE = 0.05

SCENARIO_LABELS = {
    "customer": "GET /api/customers/<id>",
    "rentals_list": "GET /api/rentals?limit=50",
    "rentals_deep": "GET /api/rentals deep page (cursor)",
    "dashboard": "GET /api/dashboard",
    "rentals_post": "POST /api/rentals",
    "mixed": "mixed (reads + writes)",
}


class Results:
    """The points of one run, indexed for tables and ratios."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.meta = data["meta"]
        self.points = [p for p in data["points"] if not p.get("failed")]
        self.failed = [p for p in data["points"] if p.get("failed")]
        self.by_key: dict[tuple[str, str, int, int], dict] = {
            (p["scenario"], p["app"], p["connections"], p["round"]): p for p in self.points
        }
        self.connections = sorted({p["connections"] for p in data["points"]})
        self.rounds = sorted({p["round"] for p in data["points"]})

    def scenarios(self) -> list[str]:
        """Return the measured scenarios in their canonical order."""
        present = {p["scenario"] for p in self.data["points"]}
        return [name for name in SCENARIO_LABELS if name in present]

    def apps(self, scenario: str) -> list[str]:
        """Return the apps measured in `scenario`, in the canonical order; api@<rev> right after api."""
        present = {p["app"] for p in self.data["points"] if p["scenario"] == scenario}
        order = list(APPS)

        def position(name: str) -> tuple[int, str]:
            base = name.partition("@")[0]
            return order.index(base), name  # "api" sorts before "api@..."

        return sorted((name for name in present if name.partition("@")[0] in APPS), key=position)

    def baseline(self) -> dict[str, str] | None:
        """Return the A/B baseline's ref, commit and app name (BENCH_BASELINE_REF), or None."""
        return self.meta.get("baseline")

    def series(self, scenario: str, app: str, c: int) -> list[dict]:
        """Return the points of one (scenario, app, connections), one per round."""
        return [self.by_key[key] for r in self.rounds if (key := (scenario, app, c, r)) in self.by_key]

    def median(self, scenario: str, app: str, c: int, field: str) -> float | None:
        """Return the median over rounds of `field`, or None when nothing was measured."""
        values = [p[field] for p in self.series(scenario, app, c)]
        return statistics.median(values) if values else None

    def paired(
        self, scenario: str, app: str, other: str, *, other_scenario: str | None = None, invert: bool = False
    ) -> dict[int, list[float]]:
        """Return {connections: [rps(app)/rps(other) per round]} for the points both have."""
        other_scenario = other_scenario or scenario
        ratios: dict[int, list[float]] = defaultdict(list)
        for c in self.connections:
            for r in self.rounds:
                a = self.by_key.get((scenario, app, c, r))
                b = self.by_key.get((other_scenario, other, c, r))
                if a and b and a["rps"] > 0 and b["rps"] > 0:
                    ratios[c].append(b["rps"] / a["rps"] if invert else a["rps"] / b["rps"])
        return ratios

    def error_counts(self, scenario: str, app: str, c: int) -> tuple[int, int, int]:
        """Return (non-2xx without 409, 409, socket errors) summed over rounds."""
        points = self.series(scenario, app, c)
        non_2xx = sum(p["non_2xx"] - p["conflicts_409"] for p in points)
        conflicts = sum(p["conflicts_409"] for p in points)
        sockets = sum(sum(p["socket_errors"].values()) for p in points)
        return non_2xx, conflicts, sockets


def summary(ratios: dict[int, list[float]], low: int = LOW_C) -> tuple[float, float, float, int] | None:
    """Return (median, min, max, n) of the ratios at `low` connections and up, or None."""
    values = [v for c, vs in ratios.items() if c >= low for v in vs]
    if not values:
        return None
    return statistics.median(values), min(values), max(values), len(values)


def fmt_ratio(value: float | None) -> str:
    """Return a ratio as 0.97x (1.2x from 10 up), or n/a."""
    if value is None:
        return "n/a"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def best_peer(res: Results) -> str | None:
    """Return the fastest peer in the customer scenario from 16 connections up.

    Judged by its paired median ratio to hello (the same figure the ratio plot shows), or
    by its median req/s when hello was not measured.
    """
    scores = {}
    for peer in PEERS:
        ratio = summary(res.paired("customer", peer, "hello"))
        if ratio:
            scores[peer] = ratio[0]
    if not scores:
        for peer in PEERS:
            values = [p["rps"] for c in res.connections if c >= LOW_C for p in res.series("customer", peer, c)]
            if values:
                scores[peer] = statistics.median(values)
    return max(scores, key=scores.get) if scores else None


def pgbouncer_verdict(res: Results) -> str | None:
    """Return one sentence, from the paired medians, on which pool mode to run behind PgBouncer; None if unmeasured.

    The ratio compared is req/s api-pgbouncer / req/s api-pgbouncer-null over the points
    from LOW_C connections up, per scenario measured with both.
    """
    figures = []
    for scenario in res.scenarios():
        pool_vs_null = summary(res.paired(scenario, POOLED, POOLED_NULL))
        if pool_vs_null:
            figures.append((scenario, pool_vs_null, summary(res.paired(scenario, POOLED, "api"))))
    if not figures:
        return None
    medians = [s[0] for _, s, _ in figures]
    if all(m >= 1 + NOISE for m in medians):
        advice = "keep the app's own pool behind PgBouncer (DB_POOL_MODE=pool)"
    elif all(m <= 1 - NOISE for m in medians):
        advice = "use DB_POOL_MODE=null behind PgBouncer"
    else:
        advice = (
            f"neither mode is ahead by more than {NOISE:.0%} in every scenario, which this machine cannot tell apart"
        )
    parts = [
        f"{fmt_ratio(s[0])} on {SCENARIO_LABELS[scenario]} ({fmt_ratio(s[1])} to {fmt_ratio(s[2])}, {s[3]} pairs)"
        for scenario, s, _ in figures
    ]
    direct = [f"{fmt_ratio(d[0])} on {SCENARIO_LABELS[scenario]}" for scenario, _, d in figures if d is not None]
    sentence = (
        "Behind PgBouncer the app's own pool served this many times the requests per second of null mode: "
        f"{' and '.join(parts)}, paired medians from {LOW_C} connections up"
    )
    if direct:
        sentence += f" (and {' and '.join(direct)} those of the same pool straight to PostgreSQL)"
    return f"{sentence}: {advice}."
