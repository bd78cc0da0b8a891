"""make cluster: a production-shaped deployment on one machine, from one command.

    HAProxy 127.0.0.1:PORT (8000)
      -> two API hosts: two gunicorn masters on 127.0.0.1 (CLUSTER_API_PORTS, free ports by default)
        -> PgBouncer, transaction mode, 127.0.0.1:DEV_PGBOUNCER_PORT (64329)
          -> the embedded PostgreSQL of make run, 127.0.0.1:DEV_DB_PORT (54329), data in .devdb/
        -> reads that may be a moment stale: a streaming replica of it,
           127.0.0.1:DEV_REPLICA_PORT (54339), data in .cluster/replica/

The database is make run's: same folder, role, migrations (applied straight to PostgreSQL,
as make run does), demo data and printed lines; the cluster also puts the configured
timeouts on the role (`flask db apply-timeouts`), where PgBouncer's sessions get them.
Each API host runs with .env.dev's settings and what a host behind PgBouncer and a
balancer sets: DATABASE_URL through
PgBouncer, DB_POOLER=pgbouncer (no startup `options`, which PgBouncer refuses),
PGBOUNCER_ADMIN_URL (PgBouncer's figures in /api/health/db and /metrics), API_HOSTS=2,
TRUSTED_PROXIES=1 and DATABASE_REPLICA_URLS: the replica, reached directly (the timeouts
on the role replicate with it). The replica is made fresh at each start with the wheel's
pg_basebackup (a hot standby on a physical replication slot) and removed, slot included,
on the way out, so a stopped cluster holds no WAL on make run's database. PgBouncer and
HAProxy come from Debian's packages
(installed when missing, as root), run as the embedded PostgreSQL's non-root user, and
write their generated configuration and their logs into .cluster/ (CLUSTER_DIR).

Ctrl-C, or a SIGINT or SIGTERM sent to this process alone, stops HAProxy, then both API
hosts, then PgBouncer, then the replica, then PostgreSQL (devtools/launch.py).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from devtools.debian import ProgramUnavailable
from devtools.embedded_pg import EmbeddedReplica, free_port
from devtools.haproxy import HAProxy, ensure_haproxy
from devtools.launch import (
    GUNICORN_COMMAND,
    ROOT,
    DevDatabase,
    Supervisor,
    banner,
    env_port,
    served_address,
    wait_until_serving,
)
from devtools.pgbouncer import PgBouncer, ensure_pgbouncer

API_HOSTS = 2

logger = logging.getLogger("cluster")


def cluster_folder() -> Path:
    """Return the folder for PgBouncer's and HAProxy's generated files and logs (CLUSTER_DIR, else .cluster/)."""
    return Path(os.environ.get("CLUSTER_DIR") or ROOT / ".cluster").resolve()


def api_ports() -> list[int]:
    """Return the API hosts' ports: CLUSTER_API_PORTS (comma-separated), else free ones."""
    given = os.environ.get("CLUSTER_API_PORTS")
    ports = [int(port) for port in given.split(",")] if given else [free_port() for _ in range(API_HOSTS)]
    if len(ports) != API_HOSTS or len(set(ports)) != API_HOSTS:
        raise ValueError(f"CLUSTER_API_PORTS must list {API_HOSTS} different ports, not {given!r}")
    return ports


def host_environment(database_url: str, port: int, bouncer: PgBouncer, replica_url: str) -> dict[str, str]:
    """Return the environment of one API host: ours, .env.dev's (APP_ENV=dev), and what the cluster sets."""
    env = {
        **os.environ,
        "APP_ENV": "dev",
        "DATABASE_URL": database_url,
        "DB_POOLER": "pgbouncer",
        # PgBouncer's figures in /api/health/db and /metrics, read as its monitoring user.
        "PGBOUNCER_ADMIN_URL": bouncer.admin_dsn(),
        "API_HOSTS": str(API_HOSTS),
        # Reads that may be a moment stale go to the replica (README, Read replicas).
        "DATABASE_REPLICA_URLS": replica_url,
        # One balancer in front appends the client's address to X-Forwarded-For.
        "TRUSTED_PROXIES": "1",
        "BIND_HOST": "127.0.0.1",
        "PORT": str(port),
    }
    # Each host has its own metrics folder, as on two machines (gunicorn.conf.py makes one).
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def main() -> int:
    """Run the cluster until Ctrl-C, SIGINT or SIGTERM; return 0, or 1 when it cannot start."""
    logging.basicConfig(level=logging.INFO, format="cluster: %(message)s")
    from apps.api.app.config import load_settings

    try:
        ensure_pgbouncer()
        ensure_haproxy()
        ports = api_ports()
        with Supervisor() as supervisor:
            database = supervisor.enter(DevDatabase())
            # Behind PgBouncer the timeouts travel on the role; each worker checks they arrive.
            target, demo = database.prepare(timeouts_on_role=True)
            folder = cluster_folder()
            replica = supervisor.enter(
                EmbeddedReplica(folder / "replica", database.server, port=env_port("DEV_REPLICA_PORT", 54339))
            )
            replica_url = replica.dsn(target.dbname, user=target.role, password=target.password)
            bouncer = supervisor.enter(
                PgBouncer(
                    folder / "pgbouncer",
                    database.server.host,
                    database.port,
                    users={target.role: target.password},
                    port=env_port("DEV_PGBOUNCER_PORT", 64329),
                    # A request waiting at the pooler is ended well within its DB_REQUEST_BUDGET_MS
                    # (30 s), read retry included (README, Behind PgBouncer).
                    query_wait_timeout=10,
                )
            )
            envs = [
                host_environment(bouncer.dsn(target.dbname, target.role), port, bouncer, replica_url) for port in ports
            ]
            names = [f"api host {number} (127.0.0.1:{port})" for number, port in enumerate(ports, start=1)]
            hosts = supervisor.start(names, [GUNICORN_COMMAND] * API_HOSTS, envs=envs)
            for port in ports:
                wait_until_serving(served_address("127.0.0.1", port), hosts)
            settings = load_settings(environ={**os.environ, "APP_ENV": "dev"})
            balancer = supervisor.enter(
                HAProxy(folder / "haproxy", [("127.0.0.1", port) for port in ports], port=settings.port)
            )
            base = served_address(balancer.host, balancer.port)
            wait_until_serving(base, hosts)
            details = [
                f"  HAProxy {balancer.host}:{balancer.port} -> API hosts "
                + ", ".join(f"127.0.0.1:{port}" for port in ports)
                + f" -> PgBouncer {bouncer.host}:{bouncer.port} ({bouncer.config['pool_mode']} mode)"
                + f" -> PostgreSQL {database.server.host}:{database.port}",
                f"  read replica (hot standby, slot {replica.slot}) {replica.host}:{replica.port}, stale reads only",
                f"  PgBouncer's console: psql '{bouncer.admin_dsn()}' -c 'SHOW POOLS'",
                f"  logs: {bouncer.log_file}, {balancer.log_file}",
            ]
            title = f"Rentals API cluster on {base}  (Ctrl-C stops everything)"
            print(banner(base, settings.health_api_token, demo, target.url, title=title, details=details), flush=True)
            return supervisor.wait()
    except (ProgramUnavailable, RuntimeError, ValueError) as exc:
        print(f"cluster: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
