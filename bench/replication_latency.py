"""What a synchronous standby costs a write: commit latency with an asynchronous replica, then a synchronous one.

    .venv/bin/python -m bench.replication_latency [--runs 5] [--commits 300] [--out FILE]

Starts a durable primary (fsync on, as in production) and a streaming replica of it from
the embedded binaries, on loopback. Each run times `--commits` single-row INSERTs, each its
own transaction (what `execute_write` does), with `synchronous_standby_names` empty
(asynchronous: the commit waits for the primary's own WAL flush) and then `*` (synchronous:
it also waits for the replica to flush it); the modes alternate run by run so that the
machine's noise falls on both. Prints each run's median and the median of the runs, in ms.
On loopback the replica's round trip is microseconds: what the figure measures is the
replica's own flush; across a network add one round trip per commit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psycopg2

from devtools.embedded_pg import EmbeddedPostgres, EmbeddedReplica

MODES = {"async": "", "sync": "*"}


def _set_mode(primary: EmbeddedPostgres, names: str) -> None:
    primary.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
    primary.execute("SELECT pg_reload_conf()")
    wanted = "sync" if names else "async"
    deadline = time.monotonic() + 10
    while primary.execute("SELECT sync_state FROM pg_stat_replication") != [(wanted,)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replica did not become {wanted}")
        time.sleep(0.05)


def _time_commits(url: str, commits: int) -> list[float]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            seconds = []
            for n in range(commits):
                started = time.perf_counter()
                cur.execute("INSERT INTO writes (body) VALUES (%s)", (f"write {n}",))
                seconds.append(time.perf_counter() - started)
        return seconds
    finally:
        conn.close()


def measure(runs: int, commits: int) -> dict[str, object]:
    """Return each mode's per-run medians and their median, in ms."""
    folder = Path(tempfile.mkdtemp(prefix="rentals-replication-latency-"))
    primary = EmbeddedPostgres(folder / "primary")
    replica = EmbeddedReplica(folder / "replica", primary)
    try:
        primary.start()
        primary.execute("CREATE TABLE writes (id bigserial PRIMARY KEY, body text NOT NULL)")
        replica.start()
        replica.wait_caught_up()
        medians: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(runs):
            for mode, names in MODES.items():
                _set_mode(primary, names)
                _time_commits(primary.dsn(), 20)  # warm up the connection and the caches
                medians[mode].append(round(statistics.median(_time_commits(primary.dsn(), commits)) * 1000, 3))
        version = primary.execute("SHOW server_version")[0][0]
    finally:
        replica.remove()
        primary.remove()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "postgresql": version,
        "runs": runs,
        "commits_per_run": commits,
        "run_medians_ms": medians,
        "median_ms": {mode: statistics.median(values) for mode, values in medians.items()},
    }


def main() -> None:
    """Measure and print the figures (and write them to --out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = measure(args.runs, args.commits)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
