"""Fixtures: one embedded PostgreSQL per test session, a migrated template database, and a
fresh database per test cloned from it by pytest-postgresql.

Tests in a module marked `both_routes` run twice: straight to PostgreSQL (`[direct]`) and
through a real PgBouncer in transaction mode (`[pgbouncer]`, the app with
DB_POOLER=pgbouncer, the timeouts on the role as `db apply-timeouts` sets them). A test
there that looks at backends directly is marked `direct_only`, with its reason.

Only fixtures and the pytest-postgresql factories live here; the plain functions they use,
and the tests import, are in tests/helpers.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
from pytest_postgresql import factories

from devtools.debian import HAPROXY, PGBOUNCER, PROMTOOL
from devtools.embedded_pg import EmbeddedPostgres
from devtools.pgbouncer import PgBouncer
from tests.helpers import (
    HEALTH_HEADERS,
    TEST_PASSWORD,
    ServerInfo,
    app_maker,
    apply_role_timeouts,
    autocommit_connection,
    bearer,
    dbname_of,
    insert_row,
    load_migrations,
    missing_programs_fail,
    private_server,
    unavailable_reason,
)
from tests.support.gunicorn import SERVERS, AppServer
from tests.support.replicas import ReplicaPair, replica_pair
from tests.support.smtp import SmtpServer


@pytest.fixture(autouse=True)
def _debian_programs(request) -> None:
    """Skip a test marked with a Debian program it cannot have (saying why); fail it under CI=true."""
    for marker, program in (("pgbouncer", PGBOUNCER), ("haproxy", HAPROXY), ("promtool", PROMTOOL)):
        if request.node.get_closest_marker(marker) is None:
            continue
        reason = unavailable_reason(program)
        if reason and missing_programs_fail():
            pytest.fail(f"CI=true needs {program.name} and it cannot be installed: {reason}")
        if reason:
            pytest.skip(reason)


def pytest_generate_tests(metafunc) -> None:
    """Run the tests of a module marked both_routes once direct and once through PgBouncer (not direct_only ones)."""
    definition = metafunc.definition
    if "db_route" not in metafunc.fixturenames or definition.get_closest_marker("both_routes") is None:
        return
    if definition.get_closest_marker("direct_only") is not None:
        return
    metafunc.parametrize("db_route", ["direct", pytest.param("pgbouncer", marks=pytest.mark.pgbouncer)], indirect=True)


def pytest_collection_modifyitems(items) -> None:
    """Keep each test file on one xdist worker (its module fixtures start once), and the chaos files on one together.

    make test runs `pytest -n N --dist loadgroup`: files spread over the workers, but two chaos
    scenarios never overlap, since each measures outage windows and latencies that a second one's
    restarts and load would distort. Without -n the groups mean nothing.
    """
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group("chaos" if path.startswith("tests/chaos/") else path))


@pytest.fixture
def db_route(request) -> str:
    """How this test's app reaches PostgreSQL: "direct", or "pgbouncer" (transaction mode)."""
    return getattr(request, "param", "direct")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """The session's PostgreSQL server: started once, stopped and deleted at the end."""
    with private_server({"max_connections": "200"}) as server:
        yield server


@pytest.fixture(scope="session")
def pg_server_info(pg_server: EmbeddedPostgres) -> ServerInfo:
    """Connection facts of the session server, in the shape pytest-postgresql reads."""
    return ServerInfo(pg_server.host, pg_server.port, pg_server.user, pg_server.password)


postgresql_proc = factories.postgresql_noproc(
    depends_on="pg_server_info", dbname="rentals_test", load=[load_migrations]
)
postgresql = factories.postgresql("postgresql_proc")


@pytest.fixture
def direct_database_url(postgresql) -> str:
    """URL of this test's own database on the server itself, a fresh copy of the migrated template."""
    info = postgresql.info
    return f"postgresql://{info.user}:{info.password}@{info.host}:{info.port}/{info.dbname}"


@pytest.fixture(scope="session")
def session_pgbouncer(pg_server: EmbeddedPostgres, tmp_path_factory) -> Iterator[PgBouncer]:
    """One PgBouncer in transaction mode in front of the session server, for the tests' pgbouncer route."""
    bouncer = PgBouncer(
        tmp_path_factory.mktemp("session-pgbouncer"),
        pg_server.host,
        pg_server.port,
        users={pg_server.user: pg_server.password},
        default_pool_size=20,
    )
    with bouncer.start():
        yield bouncer


@pytest.fixture
def database_url(direct_database_url: str, db_route: str, request) -> Iterator[str]:
    """URL of this test's own database for the app: the server itself, or PgBouncer in front of it."""
    if db_route == "direct":
        yield direct_database_url
        return
    bouncer: PgBouncer = request.getfixturevalue("session_pgbouncer")
    dbname = dbname_of(direct_database_url)
    # What `db apply-timeouts` does: behind PgBouncer the timeouts travel on the role.
    apply_role_timeouts(direct_database_url)
    try:
        yield bouncer.dsn(dbname)
    finally:
        # Drop PgBouncer's server connections to this database before pytest-postgresql drops it.
        bouncer.admin(f"KILL {dbname}")
        bouncer.admin(f"RESUME {dbname}")


@pytest.fixture(scope="module")
def pg_replica_pair() -> Iterator[ReplicaPair]:
    """A primary and a streaming replica (hot standby, replication slot) for one test module; removed after.

    Both have the migrated database `pair.dbname`, shared by the module's tests (each
    leaves the pair running and replaying, as it found it). Module-scoped: the base backup
    costs a second or two; each xdist worker makes its own pair in its own temporary folder.
    """
    # A replay that conflicts with a replica query cancels it after 100 ms (the default 30 s
    # would hold replay, and the recovery-conflict test, that long).
    with replica_pair(settings={"max_standby_streaming_delay": "100ms"}) as pair:
        yield pair


@pytest.fixture
def running_pair(pg_replica_pair: ReplicaPair) -> Iterator[ReplicaPair]:
    """The module's primary and replica, handed back running, replaying and caught up whatever the test did."""
    try:
        yield pg_replica_pair
    finally:
        replica = pg_replica_pair.replica
        if not replica.running():
            replica.start()
        replica.execute("SELECT pg_wal_replay_resume()")
        replica.wait_caught_up()


@pytest.fixture
def primary_conn(running_pair: ReplicaPair) -> Iterator[psycopg2.extensions.connection]:
    """A superuser connection to the pair's database on the primary, in autocommit."""
    with autocommit_connection(running_pair.primary_url) as conn:
        yield conn


@pytest.fixture
def make_replica_app(running_pair: ReplicaPair):
    """Build apps on the pair's primary with its replica in DATABASE_REPLICA_URLS: make_replica_app(**settings).

    The replica is checked every 50 ms. Their pools (and replica checks) are closed after.
    """
    with app_maker(
        running_pair.primary_url, DATABASE_REPLICA_URLS=running_pair.replica_url, DB_REPLICA_CHECK_INTERVAL_MS="50"
    ) as make:
        yield make


@pytest.fixture
def make_database(pg_server: EmbeddedPostgres):
    """Create empty databases on the session server: make_database(locale=None) -> URL; dropped after the test.

    `locale` (a libc locale such as C.UTF-8) gives the database its own case mapping and
    collation; the session server's databases have the C locale.
    """
    made: list[str] = []

    def make(locale: str | None = None) -> str:
        name = f"rentals_extra_{uuid.uuid4().hex[:10]}"
        options = f" TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER libc LOCALE '{locale}'" if locale else ""
        pg_server.execute(f"CREATE DATABASE {name}{options}")
        made.append(name)
        return pg_server.dsn(name)

    yield make
    for name in made:
        pg_server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def make_pgbouncer(pg_server: EmbeddedPostgres, tmp_path):
    """Start PgBouncers in front of the session server: make_pgbouncer(**PgBouncer options) -> PgBouncer; stopped after.

    Transaction mode unless told otherwise; the superuser `postgres` logs in through it
    with the server's password (`bouncer.dsn(dbname)`). Mark the test `pgbouncer`.
    """
    started: list[PgBouncer] = []

    def make(**options: object) -> PgBouncer:
        folder = tmp_path / f"pgbouncer-{len(started)}"
        bouncer = PgBouncer(
            folder, pg_server.host, pg_server.port, users={pg_server.user: pg_server.password}, **options
        )
        started.append(bouncer)
        return bouncer.start()

    yield make
    for bouncer in started:
        bouncer.stop()


@pytest.fixture
def route_settings(db_route: str) -> dict[str, str]:
    """The settings an app needs on this test's route to PostgreSQL (DB_POOLER=pgbouncer through PgBouncer)."""
    return {"DB_POOLER": "pgbouncer"} if db_route == "pgbouncer" else {}


@pytest.fixture
def make_app(database_url: str, route_settings: dict[str, str]):
    """Build apps on this test's database (through PgBouncer on the pgbouncer route); their pools are closed after."""
    with app_maker(database_url, **route_settings) as make:
        yield make


@pytest.fixture(params=SERVERS, ids=str)
def app_server(request) -> AppServer:
    """Each server the app runs under: the test runs once under gunicorn, once under granian."""
    return request.param


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
    return dict(HEALTH_HEADERS)  # a copy, so that no test can change what the next one gets


@pytest.fixture
def admin_conn(direct_database_url: str) -> Iterator[psycopg2.extensions.connection]:
    """A superuser connection straight to this test's database, outside the app's pool, in autocommit."""
    with autocommit_connection(direct_database_url) as conn:
        yield conn


@pytest.fixture
def app_role_url(admin_conn, direct_database_url: str) -> Iterator[str]:
    """URL of this test's database for a new role with only the README's grants (no superuser); dropped after."""
    role, password = f"rentals_app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with admin_conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s", (password,))
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        cur.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    parts = urlsplit(direct_database_url)
    try:
        yield urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))
    finally:
        with admin_conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                (role,),
            )
            cur.execute(f"DROP OWNED BY {role}")
            cur.execute(f"DROP ROLE {role}")


# -- the rentals domain: users, tokens, rows ---------------------------------------------


@pytest.fixture(scope="session")
def password_hash() -> str:
    """One scrypt hash of TEST_PASSWORD for the whole session (each hash costs ~70 ms)."""
    from apps.api.app.auth import hash_password

    return hash_password(TEST_PASSWORD)


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


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free port, stopped after the test."""
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
