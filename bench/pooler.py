"""The run's PgBouncer: transaction mode in front of the benchmark's PostgreSQL, for the API behind a pooler.

`api-pgbouncer` (the API's own pool) and `api-pgbouncer-null` (DB_POOL_MODE=null) reach
PostgreSQL through one PgBouncer (devtools/pgbouncer.py: Debian's package, 127.0.0.1, a
free port, scram-sha-256, run as the embedded PostgreSQL's non-root user). They log in as
a role of their own, a member of the role that owns the data, and the configured timeouts
go on that role with the project's command (`flask db apply-timeouts`, what
DB_POOLER=pgbouncer needs): the other apps' sessions keep exactly the settings they had
(the API sends the same values as startup options; the peers send none).

Sizing: `default_pool_size` is BENCH_WORKERS x BENCH_THREADS (16 by default). One app
serves at most that many requests at once, each holding at most one transaction, and
the run loads one app at a time: fewer server connections would make requests queue at
the pooler and measure its size rather than its hop; more would never be used.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psycopg2

from devtools.pgbouncer import PgBouncer

from . import dataset
from .settings import BenchSettings

logger = logging.getLogger("bench")

POOLED_ROLE = "rentals_bench_pooled"
LOG_NAME = "pgbouncer"  # its log is kept as logs/pgbouncer.log in the run folder
APPLY_TIMEOUTS = ["db", "apply-timeouts"]
# SHOW STATS counters compared before and after each point: transactions served, and the
# microseconds clients waited for a server connection (a pool sized too small shows here).
STATS_KEYS = ("total_xact_count", "total_wait_time")


class Pooler:
    """The run's PgBouncer and the role the apps behind it log in as."""

    def __init__(self, bouncer: PgBouncer, dbname: str, commands: list[str]) -> None:
        self.bouncer = bouncer
        self.dbname = dbname
        self.commands = commands

    @property
    def url(self) -> str:
        """Return the DATABASE_URL of an app behind PgBouncer."""
        return self.bouncer.dsn(self.dbname, POOLED_ROLE)

    @property
    def pid(self) -> int | None:
        """Return PgBouncer's pid while it runs (its CPU is counted per point), else None."""
        return self.bouncer.pid

    def stats(self) -> dict[str, int]:
        """Return SHOW STATS' counters for the benchmark's database ({} when the console does not answer)."""
        try:
            rows = self.bouncer.admin("SHOW STATS")
        except psycopg2.Error as exc:
            logger.warning("pgbouncer's SHOW STATS failed: %s", exc)
            return {}
        for row in rows:
            if row["database"] == self.dbname:
                return {key: int(row[key]) for key in STATS_KEYS}
        return dict.fromkeys(STATS_KEYS, 0)

    def pools(self) -> list[dict[str, Any]]:
        """Return SHOW POOLS' rows for the benchmark's database ([] when the console does not answer)."""
        try:
            return self.bouncer.pools(self.dbname)
        except psycopg2.Error as exc:
            logger.warning("pgbouncer's SHOW POOLS failed: %s", exc)
            return []

    def describe(self) -> dict[str, Any]:
        """Return PgBouncer's version and settings (no password) and the commands run, for results.json."""
        shown = (
            "pool_mode",
            "default_pool_size",
            "min_pool_size",
            "reserve_pool_size",
            "max_client_conn",
            "max_db_connections",
            "auth_type",
            "server_reset_query",
            "ignore_startup_parameters",
            "query_timeout",
            "server_lifetime",
            "server_idle_timeout",
        )
        version = ""
        with contextlib.suppress(psycopg2.Error):
            rows = self.bouncer.admin("SHOW VERSION")
            version = next(iter(rows[0].values())) if rows else ""
        return {
            "version": version,
            "role": POOLED_ROLE,
            "settings": {key: self.bouncer.config[key] for key in shown},
            "commands": self.commands,
        }


def point_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Return what PgBouncer did during one point: transactions, and client wait per transaction in us."""
    if not before or not after:
        return {}
    xacts = after["total_xact_count"] - before["total_xact_count"]
    wait = after["total_wait_time"] - before["total_wait_time"]
    return {"xacts": xacts, "wait_us_per_xact": round(wait / xacts, 1) if xacts > 0 else 0.0}


def start(
    data: dataset.Dataset,
    settings: BenchSettings,
    app_env: dict[str, str],
    stack: contextlib.ExitStack,
    logs_dir: Path,
) -> Pooler:
    """Create the pooled role, put the timeouts on it, start PgBouncer; all undone on exit (its log kept)."""
    server = data.server
    password = secrets.token_urlsafe(24)
    server.execute(f'CREATE ROLE "{POOLED_ROLE}" LOGIN PASSWORD %s IN ROLE "{dataset.ROLE}"', (password,))
    direct_url = server.dsn(dataset.DATABASE, user=POOLED_ROLE, password=password)
    # The project's own command, as an operator runs it, straight to PostgreSQL: it sets the
    # defaults of the role it logs in as, in this database, for sessions started afterwards.
    out = dataset.run_flask(APPLY_TIMEOUTS, {**app_env, "DATABASE_URL": direct_url}, timeout=120)
    logger.info("timeouts on role %s: %s", POOLED_ROLE, out.strip().splitlines()[-1] if out.strip() else "set")
    commands = [
        f'CREATE ROLE "{POOLED_ROLE}" LOGIN PASSWORD ... IN ROLE "{dataset.ROLE}"  -- as the superuser',
        "DATABASE_URL=<the pooled role, straight to PostgreSQL> flask --app apps.api.wsgi " + " ".join(APPLY_TIMEOUTS),
    ]
    folder = Path(tempfile.mkdtemp(prefix="rentals-bench-pgbouncer-"))
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    bouncer = PgBouncer(
        folder,
        server.host,
        server.port,
        users={POOLED_ROLE: password},
        default_pool_size=settings.workers * settings.threads,
    )
    # Registered before the start, which stops what it started when it fails; runs before the
    # folder's removal, so the log is kept, and after the apps stop (registered later).
    stack.callback(_stop_and_keep_log, bouncer, logs_dir / f"{LOG_NAME}.log")
    bouncer.start()
    logger.info(
        "pgbouncer up on %s:%s (pid %s), default_pool_size %s",
        bouncer.host,
        bouncer.port,
        bouncer.pid,
        bouncer.config["default_pool_size"],
    )
    return Pooler(bouncer, dataset.DATABASE, commands)


def _stop_and_keep_log(bouncer: PgBouncer, keep_as: Path) -> None:
    bouncer.stop()
    with contextlib.suppress(OSError):
        shutil.copyfile(bouncer.log_file, keep_as)
