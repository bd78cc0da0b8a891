"""Run a real PgBouncer (Debian's package, 1.18 on bookworm) in front of a PostgreSQL server.

    with PgBouncer(folder, server.host, server.port, users={"postgres": server.password}) as bouncer:
        psycopg2.connect(bouncer.dsn("rentals_test", "postgres"))
        bouncer.admin("SHOW POOLS")

`PgBouncer` writes pgbouncer.ini and a userlist into its folder and runs
`pgbouncer pgbouncer.ini` in the foreground as the non-root service user (devtools/services.py).
Every database name routes to the one upstream server (a `*` fallback entry: the tests
make a database per test). Clients and PgBouncer both authenticate with scram-sha-256
against the passwords given, kept in plain text in the userlist, which is what lets
PgBouncer log in to the server for its clients. A monitoring user (`admin_user`) may run
`SHOW POOLS`, `SHOW STATS`, `RELOAD` and the rest on the `pgbouncer` admin database.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
import psycopg2.extras

from apps.api.app.config import PGBOUNCER_ADMIN_DATABASE
from devtools.debian import PGBOUNCER
from devtools.services import BackgroundServer

ADMIN_DATABASE = PGBOUNCER_ADMIN_DATABASE


def ensure_pgbouncer() -> str:
    """Return the pgbouncer program's path, installing Debian's package when missing and running as root.

    Raises devtools.debian.ProgramUnavailable with a sentence when it cannot be had here.
    """
    return PGBOUNCER.ensure()


def _setting(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class PgBouncer(BackgroundServer):
    """One PgBouncer on 127.0.0.1 and a free port, pooling every database of one upstream server.

    `users` maps each login role to its password; clients log in with these, and PgBouncer
    logs in to the server with the same. Sizes and timeouts are PgBouncer's own settings
    (pgbouncer(5)); `settings` sets any other, or overrides one of ours. `config` holds
    them all: change it and call `reload()`, or `restart()`.
    """

    name = "pgbouncer"

    def __init__(
        self,
        folder: str | Path,
        upstream_host: str,
        upstream_port: int,
        *,
        users: Mapping[str, str],
        port: int | None = None,
        host: str = "127.0.0.1",
        pool_mode: str = "transaction",
        default_pool_size: int = 20,
        min_pool_size: int = 0,
        reserve_pool_size: int = 0,
        reserve_pool_timeout: float = 5,
        max_client_conn: int = 200,
        max_db_connections: int = 0,
        query_timeout: float = 0,
        query_wait_timeout: float = 120,
        server_idle_timeout: float = 600,
        server_lifetime: float = 3600,
        server_login_retry: float = 1,
        admin_user: str = "pgbouncer_monitor",
        settings: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(folder, host=host, port=port)
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.users = dict(users)
        self.admin_user = admin_user
        self.admin_password = secrets.token_urlsafe(24)
        self.config: dict[str, str] = {
            "listen_addr": host,
            "listen_port": str(self.port),
            # No Unix socket: clients come over TCP, as to a production pooler, and two
            # instances never fight over /var/run/postgresql.
            "unix_socket_dir": "",
            "auth_type": "scram-sha-256",
            "auth_file": str(self.folder / "userlist.txt"),
            "admin_users": admin_user,
            "stats_users": admin_user,
            "pool_mode": pool_mode,
            # Transaction mode hands a server connection to another client after every
            # transaction; a reset query would run after each one and cost a round trip for
            # nothing, as the app keeps no session state (the app's rule, not the pooler's).
            # Session mode resets what a client leaves behind.
            "server_reset_query": "" if pool_mode == "transaction" else "DISCARD ALL",
            # Only what drivers send on their own (pgjdbc sends extra_float_digits). Never
            # `options`: PgBouncer cannot pass it on, so ignoring it would silently drop the
            # timeouts a client asks for in it; a client that sends it must be refused
            # ("unsupported startup parameter: options"), and the app sends none with
            # DB_POOLER=pgbouncer.
            "ignore_startup_parameters": "extra_float_digits",
            "default_pool_size": str(default_pool_size),
            "min_pool_size": str(min_pool_size),
            "reserve_pool_size": str(reserve_pool_size),
            "reserve_pool_timeout": str(reserve_pool_timeout),
            "max_client_conn": str(max_client_conn),
            "max_db_connections": str(max_db_connections),
            "query_timeout": str(query_timeout),
            "query_wait_timeout": str(query_wait_timeout),
            "server_idle_timeout": str(server_idle_timeout),
            "server_lifetime": str(server_lifetime),
            # PgBouncer's default waits 15 s after a failed server login before it tries
            # again: a restarted PostgreSQL would be unusable through it for that long.
            "server_login_retry": str(server_login_retry),
            # One line per client connection drowns what matters: errors and pool changes.
            "log_connections": "0",
            "log_disconnections": "0",
        }
        self.config.update({key: _setting(value) for key, value in (settings or {}).items()})

    # -- files and process ----------------------------------------------------------------

    def write_config(self) -> None:
        """Write pgbouncer.ini and userlist.txt (plain-text passwords: scram-sha-256 on both sides needs them)."""
        lines = [
            "; Generated by devtools/pgbouncer.py; rewritten on every start and reload.",
            "[databases]",
            # Every database name goes to the upstream server under the same name.
            f"* = host={self.upstream_host} port={self.upstream_port}",
            "",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in self.config.items()),
        ]
        self.write_file("pgbouncer.ini", "\n".join(lines) + "\n")
        logins = {**self.users, self.admin_user: self.admin_password}
        self.write_file("userlist.txt", "".join(f"{_quoted(u)} {_quoted(p)}\n" for u, p in logins.items()))

    def command(self) -> list[str]:
        """Return `pgbouncer pgbouncer.ini`: in the foreground, logging to its output."""
        return [ensure_pgbouncer(), str(self.folder / "pgbouncer.ini")]

    def ready(self) -> bool:
        """Return True once the admin console answers."""
        try:
            self.admin("SHOW VERSION")
        except psycopg2.Error:
            return False
        return True

    # -- connecting -----------------------------------------------------------------------

    def dsn(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        """Return a libpq URL for `dbname` through PgBouncer (the first user's login by default)."""
        user = user or next(iter(self.users))
        password = self.users[user] if password is None else password
        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{dbname}"

    def admin_dsn(self) -> str:
        """Return a libpq URL for the admin console (the `pgbouncer` database) as the monitoring user."""
        return self.dsn(ADMIN_DATABASE, self.admin_user, self.admin_password)

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run one admin console command (SHOW POOLS, SHOW STATS, RELOAD, PAUSE...) and return its rows."""
        conn = psycopg2.connect(self.admin_dsn(), connect_timeout=2)
        try:
            # The console runs single commands, never inside a transaction.
            conn.autocommit = True
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(command)
                return [dict(row) for row in cur.fetchall()] if cur.description else []
        finally:
            conn.close()

    def pools(self, dbname: str | None = None) -> list[dict[str, Any]]:
        """Return SHOW POOLS' rows (cl_active, cl_waiting, sv_active, sv_idle, maxwait...), of `dbname` if given."""
        return [row for row in self.admin("SHOW POOLS") if dbname is None or row["database"] == dbname]

    def reload(self, **settings: object) -> None:
        """Apply changed settings to the running PgBouncer: rewrite its files, then RELOAD on the console.

        Settings PgBouncer reads only at boot (listen_port, unix_socket_dir...) need `restart()`.
        """
        self.config.update({key: _setting(value) for key, value in settings.items()})
        self.write_config()
        self.admin("RELOAD")


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'
