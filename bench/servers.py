"""The apps under test and how each is served: by gunicorn, gthread, the same workers and threads,
except `api-granian` (the API under granian, the README's command, --blocking-threads = the
threads) and `fastapi-asyncpg` (gunicorn's uvicorn worker: one event loop per worker).

The Rentals API runs exactly as deployed (`gunicorn -c gunicorn.conf.py apps.api.wsgi:app`,
configured by env vars); each peer runs under bench/peers/gunicorn_peer.conf.py, which
copies the API's server settings, with the same workers and threads on the command line.
With BENCH_BASELINE_REF, `api@<short sha>` is the API at that revision, served the same way
from its exported folder (bench/baseline.py). `api-pgbouncer` and `api-pgbouncer-null` are
the API served the same way with DB_POOLER=pgbouncer and DATABASE_URL at the run's PgBouncer
(bench/pooler.py), with its own pool and in null mode.
"""

from __future__ import annotations

import http.client
import logging
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from apps.api.server import granian
from devtools.embedded_pg import free_port

from . import procs
from .settings import ALL_APPS, ROOT, BenchSettings

logger = logging.getLogger("bench")

PEER_CONF = "bench/peers/gunicorn_peer.conf.py"


@dataclass(frozen=True)
class AppSpec:
    """One app of the benchmark."""

    name: str
    label: str
    kind: str  # "api" or "peer"
    target: str
    description: str
    env: dict[str, str] = field(default_factory=dict)
    root: Path = ROOT  # served from here: its code and, for the API, its gunicorn.conf.py
    # gunicorn (gthread; a peer may name another worker class), or granian (the README's command).
    server: str = "gunicorn"
    worker_class: str = "gthread"

    @property
    def behind_pgbouncer(self) -> bool:
        """Return True when the app reaches PostgreSQL through the run's PgBouncer."""
        return self.env.get("DB_POOLER") == "pgbouncer"


APPS: dict[str, AppSpec] = {
    spec.name: spec
    for spec in (
        AppSpec(
            "api",
            "Rentals API (pool)",
            "api",
            "apps.api.wsgi:app",
            "the project as deployed: its psycopg2 ThreadedConnectionPool wrapper, DB_POOL_MODE=pool",
            {"DB_POOL_MODE": "pool"},
        ),
        AppSpec(
            "api-granian",
            "Rentals API (pool) under granian",
            "api",
            granian.APP_TARGET,
            "the same app served by granian, the README's command (--blocking-threads = the threads)",
            {"DB_POOL_MODE": "pool"},
            server="granian",
        ),
        AppSpec(
            "api-null",
            "Rentals API (DB_POOL_MODE=null)",
            "api",
            "apps.api.wsgi:app",
            "the same code connecting per use: the seeds' 'before'",
            {"DB_POOL_MODE": "null"},
        ),
        AppSpec(
            "api-pgbouncer",
            "Rentals API (pool) behind PgBouncer",
            "api",
            "apps.api.wsgi:app",
            "the API with its own pool, connected to PgBouncer in transaction mode (DB_POOLER=pgbouncer)",
            {"DB_POOL_MODE": "pool", "DB_POOLER": "pgbouncer"},
        ),
        AppSpec(
            "api-pgbouncer-null",
            "Rentals API (null) behind PgBouncer",
            "api",
            "apps.api.wsgi:app",
            "the API connecting to PgBouncer per use (DB_POOL_MODE=null, DB_POOLER=pgbouncer)",
            {"DB_POOL_MODE": "null", "DB_POOLER": "pgbouncer"},
        ),
        AppSpec(
            "psycopg2-seeds",
            "psycopg2 pool min2/max10 (seeds)",
            "peer",
            "bench.peers.psycopg2_seeds:app",
            "ThreadedConnectionPool(minconn=2, maxconn=10): getconn, query, putconn",
            {"BENCH_PSYCOPG2_MINCONN": "2", "BENCH_PSYCOPG2_MAXCONN": "10"},
        ),
        AppSpec(
            "psycopg2-fixed",
            "psycopg2 pool fixed 10",
            "peer",
            "bench.peers.psycopg2_seeds:app",
            "ThreadedConnectionPool(minconn=10, maxconn=10): the same code, no reconnects",
            {"BENCH_PSYCOPG2_MINCONN": "10", "BENCH_PSYCOPG2_MAXCONN": "10"},
        ),
        AppSpec(
            "sqlalchemy",
            "SQLAlchemy QueuePool + pre_ping",
            "peer",
            "bench.peers.sqlalchemy_queuepool:app",
            "create_engine(pool_size=10, max_overflow=0, pool_pre_ping=True) on psycopg2",
            {"BENCH_POOL_SIZE": "10"},
        ),
        AppSpec(
            "psycopg3",
            "psycopg_pool (psycopg 3)",
            "peer",
            "bench.peers.psycopg3_pool:app",
            "psycopg_pool.ConnectionPool(min_size=2, max_size=10), `with pool.connection()`",
            {"BENCH_POOL_MIN": "2", "BENCH_POOL_SIZE": "10"},
        ),
        AppSpec(
            "fastapi-asyncpg",
            "FastAPI + asyncpg (uvicorn worker)",
            "peer",
            "bench.peers.fastapi_asyncpg:app",
            "asyncpg.create_pool(min_size=10, max_size=10), under gunicorn's uvicorn worker (uvloop, httptools)",
            {"BENCH_POOL_SIZE": "10"},
            worker_class="uvicorn.workers.UvicornWorker",
        ),
        AppSpec(
            "hello",
            "hello (no database: the ceiling)",
            "peer",
            "bench.peers.hello:app",
            "same route shape and reply size, no database",
        ),
    )
}

assert tuple(APPS) == ALL_APPS, "bench/settings.py ALL_APPS must list the apps in this order"

PEERS = ("psycopg2-seeds", "psycopg2-fixed", "sqlalchemy", "psycopg3", "fastapi-asyncpg")


def app_label(name: str) -> str:
    """Return an app's label for tables and legends; `api@<rev>` is the API's label at <rev>."""
    base, at, rev = name.partition("@")
    if at and base in APPS:
        return f"{APPS[base].label} at {rev}"
    return APPS[name].label if name in APPS else name


def baseline_spec(name: str, ref: str, root: Path) -> AppSpec:
    """Return the `api` app as it is at another revision, exported into `root`."""
    api = APPS["api"]
    return replace(
        api,
        name=name,
        label=app_label(name),
        description=f"the project at {ref}, DB_POOL_MODE=pool: its export, served by its own gunicorn.conf.py",
        # Its own code first, whatever PYTHONPATH the caller had.
        env={**api.env, "PYTHONPATH": str(root)},
        root=root,
    )


@dataclass
class RunningApp:
    """A started app: its gunicorn master, port and log."""

    spec: AppSpec
    port: int
    process: subprocess.Popen
    log_path: Path
    command: str

    @property
    def url(self) -> str:
        """Return the app's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """Return True while the gunicorn master runs."""
        return self.process.poll() is None


def gunicorn_command(spec: AppSpec, settings: BenchSettings, port: int) -> list[str]:
    """Return the argv that serves `spec` (after the interpreter)."""
    if spec.server == "granian":
        return granian.command(sys.executable, settings.workers, settings.threads, "127.0.0.1", port)[2:]
    if spec.kind == "api":
        return ["gunicorn", "-c", "gunicorn.conf.py", spec.target]
    return [
        "gunicorn",
        "-c",
        PEER_CONF,
        "-w",
        str(settings.workers),
        "-k",
        spec.worker_class,
        "--threads",
        str(settings.threads),
        "-b",
        f"127.0.0.1:{port}",
        spec.target,
    ]


def app_env(spec: AppSpec, base_env: dict[str, str], port: int) -> dict[str, str]:
    """Return the full environment of `spec`: the shared one, its own settings and its port."""
    return {**base_env, **spec.env, "PORT": str(port)}


def _http_status(port: int, path: str, token: str | None) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def start_app(
    spec: AppSpec,
    settings: BenchSettings,
    base_env: dict[str, str],
    logs_dir: Path,
    ready_path: str,
) -> RunningApp:
    """Start `spec` on a free port and wait until `ready_path` answers 200; the caller stops it.

    The access log (gunicorn's stdout, as deployed) goes to /dev/null; everything else
    gunicorn and the app log goes to logs_dir/<name>.log.
    """
    port = free_port()
    argv = gunicorn_command(spec, settings, port)
    env = app_env(spec, base_env, port)
    log_path = logs_dir / f"{spec.name}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", *argv],
            env=env,
            cwd=str(spec.root),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    running = RunningApp(spec, port, process, log_path, " ".join(argv))
    try:
        procs.wait_until(
            lambda: _ready(running, ready_path),
            timeout=60,
            what=f"{spec.name} answering 200 on {ready_path}",
        )
    except BaseException:
        procs.stop_process(process, grace=5)
        tail = log_path.read_text(errors="replace")[-3000:]
        logger.error("%s did not start; its log ends with:\n%s", spec.name, tail)
        raise
    logger.info("%s is up on port %s (pid %s)", spec.name, port, process.pid)
    return running


def _ready(running: RunningApp, path: str) -> bool:
    if not running.alive():
        raise RuntimeError(f"{running.spec.name} exited with {running.process.returncode} while starting")
    return _http_status(running.port, path, None) == 200
