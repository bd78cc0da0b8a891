"""PgBouncer's admin console: what it says about the pool of this app's database (PGBOUNCER_ADMIN_URL).

PgBouncer names a pool by the database and user a client logs in with, so this app's pool
is the database and user of DATABASE_URL. One reading opens a connection to the console
(the virtual `pgbouncer` database), runs SHOW POOLS, SHOW STATS, SHOW DATABASES and SHOW
CONFIG, and closes it. The console speaks only the simple query protocol and refuses
transactions, hence a plain psycopg2 connection in autocommit, outside the app's pool; a
user in PgBouncer's `stats_users` may run all four. Callers: /api/health/db (each
request), the startup capacity check, and the one worker per host that feeds /metrics.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from .config import PGBOUNCER_ADMIN_DATABASE, Settings

# libpq waits at least 2 s for a connection whatever is asked; a console that is up answers
# in milliseconds, so this only bounds an unreachable one.
CONNECT_TIMEOUT = 2
APPLICATION_NAME = "rentals-api-pooler-monitor"

# SHOW POOLS columns kept for our pool, under PgBouncer's own names: clients active and
# waiting for a server connection; server connections active (linked to a client), idle,
# used (back from a client, not yet reset or tested), tested, logging in.
POOL_COLUMNS = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
CL_ACTIVE = "cl_active"
CL_WAITING = "cl_waiting"
SV_IDLE = "sv_idle"
MAXWAIT_MS = "maxwait_ms"
# SHOW STATS columns kept for our database: counts since PgBouncer started, and averages
# over its last stats_period (60 s by default), times in microseconds (reported in ms).
STATS_COUNTS = ("total_xact_count", "total_query_count", "avg_xact_count", "avg_query_count")
STATS_TIMES_US = ("avg_xact_time", "avg_query_time", "avg_wait_time")
# The limits the capacity arithmetic needs (apps/api/app/capacity.py).
POOL_SIZE = "pool_size"
RESERVE_POOL = "reserve_pool"
MAX_CLIENT_CONN = "max_client_conn"
MAX_DB_CONNECTIONS = "max_db_connections"
QUERY_WAIT_TIMEOUT = "query_wait_timeout_seconds"
POOLS = "pools"
DATABASES = "databases"


class PoolerUnreachable(Exception):
    """PgBouncer's admin console could not be reached, or refused what it was asked."""


def our_pool(database_url: str) -> tuple[str, str]:
    """Return the database and the user of DATABASE_URL: the names of this app's pool at PgBouncer."""
    params = psycopg2.extensions.parse_dsn(database_url)
    user = params.get("user", "")
    return params.get("dbname") or user, user


def _redacted_error(exc: psycopg2.Error, url: str) -> str:
    # libpq's messages name the host and user, never the password; but a message about a
    # malformed URL may quote it, so the URL's credentials are replaced wherever they appear.
    message = " ".join(str(exc).split()) or type(exc).__name__
    password = urlsplit(url).password
    if password:
        for form in {password, unquote(password)}:
            message = message.replace(f":{form}@", ":***@")
    return message


def _number(value: Any) -> float:
    # SHOW STATS answers numeric (Decimal), SHOW CONFIG text; float() takes both.
    return float(value or 0)


def _show(cur: psycopg2.extensions.cursor, command: str) -> list[dict[str, Any]]:
    cur.execute(command)
    return [dict(row) for row in cur.fetchall()]


def read_figures(settings: Settings) -> dict[str, Any]:
    """Return PgBouncer's figures for this app's pool: its state, its stats and the limits around it.

    Keys: `database`, `user`, `pool_mode`, `pool` (the POOL_COLUMNS and `maxwait_ms`),
    `stats` (STATS_COUNTS, and STATS_TIMES_US in ms with an `_ms` suffix) and `limits`
    (pool_size, reserve_pool, max_client_conn, max_db_connections,
    query_wait_timeout_seconds, pools and databases in use). A pool no client has opened
    yet reads as zeros. Raises PoolerUnreachable with a sentence that holds no password.
    Blocks up to CONNECT_TIMEOUT s on an unreachable console.
    """
    url = settings.pgbouncer_admin_url
    dbname, user = our_pool(settings.database_url)
    try:
        conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT, application_name=APPLICATION_NAME)
    except psycopg2.Error as exc:
        raise PoolerUnreachable(f"cannot connect to PgBouncer's admin console: {_redacted_error(exc, url)}") from None
    try:
        conn.autocommit = True
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            pools = _show(cur, "SHOW POOLS")
            stats = _show(cur, "SHOW STATS")
            databases = _show(cur, "SHOW DATABASES")
            config = {row["key"]: row["value"] for row in _show(cur, "SHOW CONFIG")}
    except psycopg2.Error as exc:
        raise PoolerUnreachable(f"PgBouncer's admin console refused a SHOW: {_redacted_error(exc, url)}") from None
    finally:
        conn.close()
    return _figures(dbname, user, pools, stats, databases, config)


def _figures(
    dbname: str,
    user: str,
    pools: list[dict[str, Any]],
    stats: list[dict[str, Any]],
    databases: list[dict[str, Any]],
    config: dict[str, str],
) -> dict[str, Any]:
    ours = next((row for row in pools if row["database"] == dbname and row["user"] == user), {})
    pool: dict[str, Any] = {column: int(ours.get(column) or 0) for column in POOL_COLUMNS}
    # PgBouncer splits the longest wait into whole seconds and the microseconds beyond them.
    pool[MAXWAIT_MS] = round(int(ours.get("maxwait") or 0) * 1000 + int(ours.get("maxwait_us") or 0) / 1000, 3)
    stats_row = next((row for row in stats if row["database"] == dbname), {})
    figures_stats: dict[str, Any] = {column: int(_number(stats_row.get(column))) for column in STATS_COUNTS}
    for column in STATS_TIMES_US:
        figures_stats[f"{column}_ms"] = round(_number(stats_row.get(column)) / 1000, 3)
    database = next((row for row in databases if row["name"] == dbname), {})
    # A database's own settings win over the global ones; its max_connections is 0 when unset.
    in_use = {(row["database"], row["user"]) for row in pools if row["database"] != PGBOUNCER_ADMIN_DATABASE}
    in_use.add((dbname, user))
    limits = {
        POOL_SIZE: int(database.get("pool_size") or _number(config.get("default_pool_size"))),
        RESERVE_POOL: int(database.get("reserve_pool") or _number(config.get("reserve_pool_size"))),
        MAX_CLIENT_CONN: int(_number(config.get("max_client_conn"))),
        MAX_DB_CONNECTIONS: int(database.get("max_connections") or _number(config.get("max_db_connections"))),
        QUERY_WAIT_TIMEOUT: _number(config.get("query_wait_timeout")),
        POOLS: len(in_use),
        DATABASES: len({name for name, _ in in_use}),
    }
    return {
        "database": dbname,
        "user": user,
        "pool_mode": ours.get("pool_mode") or database.get("pool_mode") or config.get("pool_mode"),
        "pool": pool,
        "stats": figures_stats,
        "limits": limits,
    }
