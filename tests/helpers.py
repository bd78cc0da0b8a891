"""Plain helpers the tests share: test settings, the app's backends, rows and tokens, waiting.

Fixtures live in conftest.py; what starts real processes (gunicorn, faults, load) lives in
tests/support/.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import psycopg2
from flask import Flask

from apps.api.app import create_app
from apps.api.app.config import load_settings
from apps.api.app.models import database
from apps.api.app.models.database import execute_query_one, get_pool
from apps.api.app.pool import ConnectionPool, PooledConnection
from devtools.debian import DebianProgram, ProgramUnavailable
from devtools.embedded_pg import EmbeddedPostgres
from devtools.pgbouncer import PgBouncer

HEALTH_TOKEN = "test-health-token"
# What passes the health endpoints' and /metrics' bearer check.
HEALTH_HEADERS = {"Authorization": f"Bearer {HEALTH_TOKEN}"}
TEST_PASSWORD = "correct horse battery staple"

T = TypeVar("T")


# -- PostgreSQL servers and the test settings ---------------------------------------------


@dataclass
class ServerInfo:
    """What pytest-postgresql's noproc factory needs from the server it depends on."""

    host: str
    port: int
    user: str
    password: str
    options: str = ""
    maintenance_dbname: str = "postgres"
    template_dbname: str | None = None


@contextlib.contextmanager
def private_server(settings: dict[str, str] | None = None) -> Iterator[EmbeddedPostgres]:
    """Run a throwaway PostgreSQL in a new folder; stop it and remove the folder when the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="rentals-test-pg-"))
    server = EmbeddedPostgres(folder / "data", settings={"fsync": "off", **(settings or {})})
    try:
        server.start()
        yield server
    finally:
        server.remove()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def autocommit_connection(url: str) -> Iterator[psycopg2.extensions.connection]:
    """A connection of its own to `url`, outside any app pool, in autocommit; closed after."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def load_migrations(host: str, port: int, user: str, dbname: str, password: str, **_: object) -> None:
    """Apply the project's migrations to the template database, through the app itself."""
    upgrade_database(f"postgresql://{user}:{password}@{host}:{port}/{dbname}")


def upgrade_database(url: str, directory: Path | None = None) -> list[str]:
    """Apply the project's migrations (or those in `directory`) to the database at `url`; return the versions."""
    from apps.api.app import migrate

    app = create_app(app_config(url))
    try:
        with app.app_context():
            return migrate.upgrade(directory) if directory else migrate.upgrade()
    finally:
        database.close_pool(app)


def app_config(database_url: str, **overrides: object) -> dict[str, str]:
    """Return settings for a test app on `database_url`; overrides by env var name."""
    config = {
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key",
        "HEALTH_API_TOKEN": HEALTH_TOKEN,
        "DB_POOL_MIN_CONNECTIONS": "1",
        "DB_POOL_MAX_CONNECTIONS": "5",
        "DB_POOL_TIMEOUT": "2",
        "LOG_LEVEL": "debug",
    }
    config.update({key: str(value) for key, value in overrides.items()})
    return config


# The timeouts the test settings ask for, by PostgreSQL's names: what `db apply-timeouts`
# puts on the role for the tests that run through PgBouncer.
DEFAULT_SESSION_TIMEOUTS = database.session_timeouts(load_settings(app_config("postgresql://test@localhost/test"), {}))


# The first line of a log record, as text (it starts with the time) or as JSON.
LOG_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\{)")


@contextlib.contextmanager
def app_maker(database_url: str, **base: object) -> Iterator[Callable[..., Flask]]:
    """Yield make(**overrides) building test apps on `database_url` with `base` settings; close their pools after."""
    apps: list[Flask] = []

    def make(**overrides: object) -> Flask:
        app = create_app(app_config(database_url, **{**base, **overrides}))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            database.close_pool(app)


def refusal_lines(stderr: str) -> list[str]:
    """Return what a process wrote to stderr besides log records: for a refused setting, its sentence alone."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_RECORD.match(line)]


def apply_role_timeouts(direct_url: str, **timeouts: int) -> None:
    """Put the test timeouts (or these) on the URL's role in its database, as `db apply-timeouts` would.

    Behind PgBouncer the sessions get them from the role; sessions opened before keep theirs.
    """
    conn = psycopg2.connect(direct_url)
    try:
        with conn, conn.cursor() as cur:
            database.set_role_timeouts(cur, {**DEFAULT_SESSION_TIMEOUTS, **timeouts})
    finally:
        conn.close()


def dbname_of(url: str) -> str:
    """Return the database name of a libpq URL."""
    return urlsplit(url).path.lstrip("/")


def through(bouncer: PgBouncer, direct_url: str) -> str:
    """Return the URL of the same database and user through `bouncer`."""
    return bouncer.dsn(dbname_of(direct_url))


# -- Debian programs (PgBouncer, HAProxy) -------------------------------------------------


@functools.cache
def unavailable_reason(program: DebianProgram) -> str | None:
    """Return why `program` cannot run here (one sentence), or None once it is installed; installs it as root.

    Asked once per test session: a failed install is not tried again for every test.
    """
    try:
        program.ensure()
    except ProgramUnavailable as exc:
        return str(exc)
    return None


def missing_programs_fail() -> bool:
    """Return True under CI=true, where a test that needs a missing program fails instead of being skipped."""
    return os.environ.get("CI") == "true"


# -- the app's backends, seen from outside ------------------------------------------------


def app_backends(conn: psycopg2.extensions.connection) -> int:
    """Return how many backends the app (application_name rentals-api) has open on the server."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (database.APPLICATION_NAME,))
        return cur.fetchone()[0]


def own_backends(conn: psycopg2.extensions.connection) -> int:
    """Return how many app backends are open on this test's database only (other tests' leftovers excluded)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            (database.APPLICATION_NAME,),
        )
        return cur.fetchone()[0]


# -- the app's pool, seen from inside ----------------------------------------------------


def pool_of(app: Flask) -> ConnectionPool:
    """Return the app's pool, opening it if needed."""
    with app.app_context():
        return get_pool()


def hold(app: Flask, count: int) -> tuple[ConnectionPool, list[PooledConnection]]:
    """Borrow `count` connections from the app's pool; the caller gives them back."""
    pool = pool_of(app)
    return pool, [pool.getconn() for _ in range(count)]


def give_back(pool: ConnectionPool, conns: list[PooledConnection]) -> None:
    """Return every held connection to the pool."""
    while conns:
        pool.putconn(conns.pop())


def backend_pid() -> int:
    """Return the backend pid of a connection borrowed from the current app's pool."""
    return execute_query_one("SELECT pg_backend_pid() AS pid")["pid"]


# -- metrics ------------------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def undocumented_metric_families(exposition: str) -> list[str]:
    """Return the metric families in a /metrics text that the README's metrics table does not list."""
    readme = README.read_text()
    families = re.findall(r"^# TYPE (\S+) \S+$", exposition, re.MULTILINE)
    assert families, "no metric family in the exposition"
    return [family for family in families if not re.search(rf"`{re.escape(family)}(_total)?[`{{]", readme)]


def metric_samples(exposition: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Return the samples of metric `name` in a /metrics text: (labels, value) each."""
    samples = []
    for line in exposition.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if match:
            samples.append((dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")), float(match.group(2))))
    return samples


# -- waiting and threads ------------------------------------------------------------------


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.02) -> T:
    """Poll `predicate` until it returns something true or `timeout` seconds pass; return its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = predicate()
        if answer or time.monotonic() >= deadline:
            return answer
        time.sleep(interval)


class AppThread(threading.Thread):
    """Run `target` inside `app`'s app context in a thread; keep its result or its exception."""

    def __init__(self, app, target, *args: object) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.target_fn = target
        self.target_args = args
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        with self.app.app_context():
            try:
                self.result = self.target_fn(*self.target_args)
            except BaseException as exc:
                self.error = exc


# -- the rentals domain: rows and tokens --------------------------------------------------


def insert_row(conn: psycopg2.extensions.connection, table: str, **values: object) -> dict:
    """Insert one row straight into `table` (test setup, outside the app) and return it as a dict."""
    columns = ", ".join(values)
    placeholders = ", ".join(["%s"] * len(values))
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) RETURNING *", tuple(values.values()))
        names = [column.name for column in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


def fullwidth(text: str) -> str:
    """Return `text` with its ASCII letters, digits and signs in their fullwidth forms (U+FF01 on)."""
    return text.translate({code: code + 0xFEE0 for code in range(0x21, 0x7F)})


def login(client, email: str, password: str = TEST_PASSWORD, **headers: str):
    """POST /api/auth/login and return the reply."""
    return client.post("/api/auth/login", json={"email": email, "password": password}, headers=headers)


def bearer(app, user: dict) -> dict[str, str]:
    """Return Authorization headers with a fresh token of `app` for `user`."""
    from apps.api.app.auth import issue_token

    with app.app_context():
        token, _ = issue_token(user["id"], user["role"])
    return {"Authorization": f"Bearer {token}"}
