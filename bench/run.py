"""make bench: the Rentals API against the pools a Flask team would pick instead, on one machine, in one run.

    .venv/bin/python -m bench.run                 # full: bench/REPORT.md, bench/*.png, bench/results.json
    BENCH_QUICK=1 .venv/bin/python -m bench.run   # smoke (2-3 min): bench/results/quick/

What one run does, stopping every process it started on success, error, Ctrl-C or SIGTERM:
1. starts an embedded PostgreSQL on a free 127.0.0.1 port with scram-sha-256 auth, creates
   a non-superuser role owning a database, migrates and seeds it with the project's own
   commands (bench/dataset.py), creates an admin user and logs in for a bearer token;
2. starts every app on its own free port under gunicorn (gthread, BENCH_WORKERS workers x
   BENCH_THREADS threads): the API in pool mode and in DB_POOL_MODE=null, the same two
   behind one PgBouncer in transaction mode (bench/pooler.py, started first, stopped after
   them), the peers of bench/peers/ and the no-database hello app; with BENCH_BASELINE_REF,
   also the API at that revision (api@<short sha>, from a `git archive` export removed at
   the end: bench/baseline.py);
3. drives each (scenario, app) with wrk at each of BENCH_CONNECTIONS after a warm-up; the
   points of a round run app after app at each connection count, and every other round
   runs the whole sequence reversed, so that drift on the shared machine hits all alike;
4. profiles the API's hot path with py-spy (bench/pyspy.py) when BENCH_PROFILE_SECONDS > 0;
5. writes results.json, REPORT.md and the plots (bench/report.py) into BENCH_OUT.

Knobs (env vars, see bench/settings.py): BENCH_QUICK, BENCH_DURATION, BENCH_POINT_WARMUP,
BENCH_WARMUP, BENCH_ROUNDS, BENCH_CONNECTIONS, BENCH_WORKERS, BENCH_THREADS,
BENCH_CUSTOMERS, BENCH_PRODUCTS, BENCH_RENTALS, BENCH_SEED, BENCH_SCENARIOS, BENCH_APPS,
BENCH_NULL_SCENARIOS, BENCH_POOLER_SCENARIOS, BENCH_MIX, BENCH_TIMEOUT, BENCH_DEEP_ROWS,
BENCH_PROFILE_SECONDS, BENCH_APP_ENV, BENCH_OUT, BENCH_BASELINE_REF.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import time
from pathlib import Path
from typing import Any

from . import analysis, load, machine, procs, report
from .harness import STAND_IN_PATH, Bench
from .settings import ALL_APPS, PGBOUNCER_APPS, ROOT, BenchConfigError, BenchSettings, load_bench_settings

logger = logging.getLogger("bench")


def main() -> int:
    """Run the whole benchmark; return 0 when the report was written."""
    logging.basicConfig(level=logging.INFO, format="bench %(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        settings = load_bench_settings()
    except BenchConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        bench = run(settings, started)
    except (load.WrkMissing, BenchConfigError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, procs.Terminated) as exc:
        print(f"bench: interrupted ({exc or 'Ctrl-C'}); every process it started is stopped", file=sys.stderr)
        return 130
    report.write(bench.results, bench.out_dir)
    log_ab(bench.results)
    verdict = analysis.pgbouncer_verdict(analysis.Results(bench.results))
    if verdict:
        logger.info("%s", verdict)
    logger.info("report: %s (%.1f min)", bench.out_dir / "REPORT.md", (time.monotonic() - started) / 60)
    return 0


def run(settings: BenchSettings, started: float) -> Bench:
    """Set up, measure and profile; return the Bench once every process it started is stopped."""
    with procs.terminate_on_signals(), contextlib.ExitStack() as stack:
        bench = Bench(settings, stack)
        logger.info("run %s, logs in %s", bench.run_id, bench.run_dir.relative_to(ROOT))
        bench.export_baseline()  # before the database: a bad ref fails in a second, not after the seed
        bench.start_database()
        names = [name for name in ALL_APPS if settings.apps is None or name in settings.apps]
        if bench.wants_pgbouncer():
            bench.start_pgbouncer()
        else:
            names = [name for name in names if name not in PGBOUNCER_APPS]
        bench.start_apps(bench.with_baseline(names))
        bench.authenticate()
        bench.decide_scenarios()
        for name, why in bench.availability.items():
            if why and name in settings.scenarios:
                logger.warning("skipping %s: %s", name, why)
        if bench.customer_path_api == STAND_IN_PATH:
            logger.warning("the API has no GET /api/customers/<id> yet: it is measured on %s", STAND_IN_PATH)
        bench.find_deep_cursor()
        bench.write_params()
        bench.describe_setup()
        bench.warm_up()
        bench.measure_all()
        bench.collect_pool_stats()
        bench.run_profiles()
        bench.results["meta"]["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        bench.results["meta"]["load_average_end"] = machine.load_average()
    bench.results["meta"]["logs"] = digest_logs(bench.logs_dir)
    bench.results["meta"]["elapsed_minutes"] = round((time.monotonic() - started) / 60, 1)
    bench.save(final=True)
    return bench


def log_ab(results: dict[str, Any]) -> None:
    """Log the A/B's paired median per scenario (BENCH_BASELINE_REF), as the report's section gives it."""
    res = analysis.Results(results)
    baseline = res.baseline()
    if not baseline:
        return
    for scenario in res.scenarios():
        s = analysis.summary(res.paired(scenario, "api", baseline["app"]), low=1)
        if s:
            median, low, high = (analysis.fmt_ratio(value) for value in s[:3])
            logger.info(
                "A/B against %s, %s: api / %s = %s median (%s to %s, %s pairs)",
                baseline["ref"],
                scenario,
                baseline["app"],
                median,
                low,
                high,
                s[3],
            )


def digest_logs(logs_dir: Path, keep_bytes: int = 50 * 1024 * 1024) -> dict[str, dict[str, int]]:
    """Count worker boots and error lines per app log; shrink logs above `keep_bytes`.

    The API logs one line per request, so a full run writes hundreds of MB; a big log keeps
    its warning and error lines and its last 2000 lines.
    """
    digest = {}
    for path in sorted(logs_dir.glob("*.log")):
        boots = pools = errors = 0
        kept: list[str] = []
        tail: list[str] = []
        big = path.stat().st_size > keep_bytes
        with path.open(errors="replace") as log:
            for line in log:
                # gunicorn logs a boot; granian logs its own to stdout (not kept), but the API's
                # workers log their pool's opening under either server.
                boots += "Booting worker" in line
                pools += " opened in pid " in line
                is_error = any(word in line for word in ("ERROR", "CRITICAL", "WARNING", "Traceback"))
                errors += "ERROR" in line or "CRITICAL" in line
                if big:
                    if is_error:
                        kept.append(line)
                    tail.append(line)
                    if len(tail) > 4000:
                        del tail[:2000]
        if big:
            note = f"[bench: log of {path.stat().st_size} bytes cut to its warning/error lines and its last lines]\n"
            path.write_text(note + "".join(kept) + "[bench: last lines]\n" + "".join(tail[-2000:]))
        digest[path.stem] = {"worker_boots": max(boots, pools), "error_lines": errors}
    return digest


if __name__ == "__main__":
    sys.exit(main())
