"""The report's PNG plots (matplotlib, on the Agg backend): throughput, p99 and ratios against connections."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .analysis import SCENARIO_LABELS, TARGET_HELLO, TARGET_PEER, Results, best_peer, fmt_ratio, summary
from .servers import app_label

COLORS = {
    "api": "#d62728",
    "api-null": "#ff9896",
    "api-granian": "#e377c2",
    "api-pgbouncer": "#17becf",
    "api-pgbouncer-null": "#9edae5",
    "psycopg2-seeds": "#9467bd",
    "psycopg2-fixed": "#1f77b4",
    "sqlalchemy": "#2ca02c",
    "psycopg3": "#ff7f0e",
    "fastapi-asyncpg": "#bcbd22",
    "hello": "#444444",
}
BASELINE_COLOR = "#8c564b"  # api@<rev>, the API at BENCH_BASELINE_REF: dotted, beside the api line


def _color(app: str) -> str | None:
    """Return the app's colour; every api@<rev> shares the baseline's."""
    return BASELINE_COLOR if "@" in app else COLORS.get(app)


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
        style = ":" if "@" in app else "--" if app in dashed or app == "hello" else "-"
        width = 3 if app.partition("@")[0] == "api" else 1.8
        ax.plot(xs, ys, style, marker="o", color=_color(app), linewidth=width, label=app_label(app))
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
        parts.append(f"API = {fmt_ratio(hello[0])} the hello ceiling")
    if null:
        parts.append(f"{fmt_ratio(null[0])} null mode")
    peer = best_peer(res)
    if peer:
        vs_peer = summary(res.paired("customer", "api", peer))
        if vs_peer:
            parts.append(f"{fmt_ratio(vs_peer[0])} the best peer ({app_label(peer)})")
        under_granian = summary(res.paired("customer", "api-granian", peer))
        if under_granian:
            parts.append(f"under granian {fmt_ratio(under_granian[0])}")
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
        color=[_color(app) for app, _ in rows],
        capsize=4,
        edgecolor="black",
        linewidth=0.5,
    )
    for y, (_, s) in zip(ys, rows, strict=True):
        ax.text(s[2] + 0.01, y, f"{s[0]:.2f}x", va="center", fontsize=10)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([app_label(app) for app, _ in rows])
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


def write_plots(res: Results, out_dir: Path) -> list[str]:
    """Draw every plot the run has data for into out_dir; return the file names written."""
    import matplotlib

    matplotlib.use("Agg")
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
    return images
