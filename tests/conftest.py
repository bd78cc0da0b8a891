"""Fixtures: one embedded PostgreSQL per test session, a migrated template database, and a
fresh database per test cloned from it by pytest-postgresql."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from pytest_postgresql import factories

from apps.api.app import create_app
from apps.api.app.models import database
from devtools.embedded_pg import EmbeddedPostgres

HEALTH_TOKEN = "test-health-token"


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


def start_private_server(settings: dict[str, str] | None = None) -> tuple[EmbeddedPostgres, Path]:
    """Start a throwaway PostgreSQL in a new folder; the caller stops it and removes the folder."""
    folder = Path(tempfile.mkdtemp(prefix="rentals-test-pg-"))
    server = EmbeddedPostgres(folder / "data", settings={"fsync": "off", **(settings or {})})
    try:
        server.start()
    except BaseException:
        server.remove()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return server, folder


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """The session's PostgreSQL server: started once, stopped and deleted at the end."""
    server, folder = start_private_server({"max_connections": "200"})
    try:
        yield server
    finally:
        server.remove()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_info(pg_server: EmbeddedPostgres) -> ServerInfo:
    """Connection facts of the session server, in the shape pytest-postgresql reads."""
    return ServerInfo(pg_server.host, pg_server.port, pg_server.user, pg_server.password)


def load_migrations(host: str, port: int, user: str, dbname: str, password: str, **_: object) -> None:
    """Apply the project's migrations to the template database, through the app itself."""
    url = f"postgresql://{user}:{password}@{host}:{port}/{dbname}"
    app = create_app(app_config(url))
    try:
        with app.app_context():
            from apps.api.app import migrate

            migrate.upgrade()
    finally:
        database.close_pool(app)


postgresql_proc = factories.postgresql_noproc(
    depends_on="pg_server_info", dbname="rentals_test", load=[load_migrations]
)
postgresql = factories.postgresql("postgresql_proc")


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


@pytest.fixture
def database_url(postgresql) -> str:
    """URL of this test's own database, a fresh copy of the migrated template."""
    info = postgresql.info
    return f"postgresql://{info.user}:{info.password}@{info.host}:{info.port}/{info.dbname}"


@pytest.fixture
def make_app(database_url: str):
    """Build apps on this test's database; every pool they open is closed after the test."""
    apps = []

    def make(**overrides: object):
        app = create_app(app_config(database_url, **overrides))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        database.close_pool(app)


@pytest.fixture
def app(make_app):
    """The app on this test's database, with the test settings."""
    return make_app()


@pytest.fixture
def client(app):
    """A test client of `app`."""
    return app.test_client()


@pytest.fixture
def health_headers() -> dict[str, str]:
    """Headers that pass the health endpoints' bearer check."""
    return {"Authorization": f"Bearer {HEALTH_TOKEN}"}


@pytest.fixture
def admin_conn(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    """A superuser connection to this test's database, outside the app's pool, in autocommit."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


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


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll `predicate` until it returns true or `timeout` seconds pass; return its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def terminate_backend(conn: psycopg2.extensions.connection, pid: int) -> None:
    """Kill one backend with pg_terminate_backend and wait (up to 5 s) until it is gone."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        assert cur.fetchone()[0], f"backend {pid} did not exit"


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


# -- the rentals domain: users, tokens, rows ---------------------------------------------

TEST_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def password_hash() -> str:
    """One scrypt hash of TEST_PASSWORD for the whole session (each hash costs ~70 ms)."""
    from apps.api.app.auth import hash_password

    return hash_password(TEST_PASSWORD)


def insert_row(conn: psycopg2.extensions.connection, table: str, **values: object) -> dict:
    """Insert one row straight into `table` (test setup, outside the app) and return it as a dict."""
    columns = ", ".join(values)
    placeholders = ", ".join(["%s"] * len(values))
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) RETURNING *", tuple(values.values()))
        names = [column.name for column in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


@pytest.fixture
def make_user(admin_conn, password_hash):
    """Insert a user with TEST_PASSWORD: make_user(role="staff", active=True, email=None) -> row."""
    made = iter(range(1, 1_000_000))

    def make(role: str = "staff", *, active: bool = True, email: str | None = None) -> dict:
        email = email or f"{role}{next(made)}@example.com"
        return insert_row(
            admin_conn,
            "users",
            email=email,
            password_hash=password_hash,
            full_name=f"Test {role.title()}",
            role=role,
            active=active,
        )

    return make


def bearer(app, user: dict) -> dict[str, str]:
    """Return Authorization headers with a fresh token of `app` for `user`."""
    from apps.api.app.auth import issue_token

    with app.app_context():
        token, _ = issue_token(user["id"], user["role"])
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def admin_user(make_user) -> dict:
    """An active admin."""
    return make_user("admin")


@pytest.fixture
def staff_user(make_user) -> dict:
    """An active staff member."""
    return make_user("staff")


@pytest.fixture
def admin_headers(app, admin_user) -> dict[str, str]:
    """Headers of a logged-in admin."""
    return bearer(app, admin_user)


@pytest.fixture
def staff_headers(app, staff_user) -> dict[str, str]:
    """Headers of a logged-in staff member."""
    return bearer(app, staff_user)


@pytest.fixture
def make_customer(admin_conn):
    """Insert a customer: make_customer(full_name=..., email=..., ...) -> row."""
    made = iter(range(1, 1_000_000))

    def make(**values: object) -> dict:
        n = next(made)
        values = {"full_name": f"Customer {n}", "email": f"customer{n}@example.com", **values}
        return insert_row(admin_conn, "customers", **values)

    return make


@pytest.fixture
def make_product(admin_conn):
    """Insert a product: make_product(daily_rate_cents=..., active=..., ...) -> row."""
    made = iter(range(1, 1_000_000))

    def make(**values: object) -> dict:
        n = next(made)
        values = {"sku": f"SKU-{n:05d}", "name": f"Product {n}", "category": "tools", "daily_rate_cents": 1500} | values
        return insert_row(admin_conn, "products", **values)

    return make


@pytest.fixture
def make_rental(admin_conn):
    """Insert a rental: make_rental(customer, product, start, end, status="reserved") -> row."""

    import datetime

    def make(customer: dict, product: dict, start, end, status: str = "reserved", **values: object) -> dict:
        days = (end - start).days
        values = {
            "customer_id": customer["id"],
            "product_id": product["id"],
            "start_date": start,
            "end_date": end,
            "status": status,
            "daily_rate_cents": product["daily_rate_cents"],
            "total_cents": product["daily_rate_cents"] * days,
            "returned_at": datetime.datetime.now(datetime.UTC) if status == "returned" else None,
            **values,
        }
        return insert_row(admin_conn, "rentals", **values)

    return make
