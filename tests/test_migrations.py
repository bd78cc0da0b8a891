"""Migrations: each numbered file applied once, in order, in its own transaction, under a lock."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest

from apps.api.app import create_app, migrate
from apps.api.app.migrate import MigrationError
from apps.api.app.models import database
from apps.api.app.models.database import execute_query
from tests.helpers import AppThread, app_config, fullwidth, insert_row, login, upgrade_database

# High versions, so they never collide with the project's own migrations already in the test database.
FIRST = "9001_create_gear.sql"
SECOND = "9002_add_gear.sql"


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    """Write migration files into `directory` and return it."""
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


def recorded(admin_conn) -> dict[str, str]:
    """Return the recorded migrations above 9000 as {version: name}."""
    with admin_conn.cursor() as cur:
        cur.execute("SELECT version, name FROM schema_migrations WHERE version >= '9000' ORDER BY version")
        return dict(cur.fetchall())


def table_exists(admin_conn, name: str) -> bool:
    """Return True when a table of that name exists in the public schema."""
    with admin_conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",))
        return cur.fetchone()[0]


@pytest.fixture
def gear_migrations(tmp_path) -> Path:
    """Two migrations: a table, then a row in it (fails if run twice)."""
    return write_migrations(
        tmp_path / "migrations",
        {
            FIRST: "CREATE TABLE gear (id int PRIMARY KEY, name text NOT NULL);\n",
            SECOND: "INSERT INTO gear (id, name) VALUES (1, 'tent');\n",
        },
    )


def test_project_migrations_are_applied_to_the_test_database(app, admin_conn):
    with app.app_context():
        assert migrate.upgrade() == []
        status = migrate.status()
    assert status
    assert all(row["applied_at"] is not None for row in status)


def test_upgrade_applies_in_order_and_records_versions(app, admin_conn, gear_migrations):
    with app.app_context():
        assert migrate.upgrade(gear_migrations) == ["9001", "9002"]
        assert execute_query("SELECT id, name FROM gear") == [{"id": 1, "name": "tent"}]
    assert recorded(admin_conn) == {"9001": "create_gear", "9002": "add_gear"}


def test_second_upgrade_is_a_no_op(app, admin_conn, gear_migrations):
    with app.app_context():
        migrate.upgrade(gear_migrations)
        assert migrate.upgrade(gear_migrations) == []
        assert execute_query("SELECT count(*)::int AS n FROM gear") == [{"n": 1}]


def test_upgrade_applies_only_new_files(app, admin_conn, gear_migrations):
    (gear_migrations / SECOND).unlink()
    with app.app_context():
        assert migrate.upgrade(gear_migrations) == ["9001"]
        write_migrations(gear_migrations, {SECOND: "INSERT INTO gear (id, name) VALUES (1, 'tent');\n"})
        assert migrate.upgrade(gear_migrations) == ["9002"]
    assert recorded(admin_conn) == {"9001": "create_gear", "9002": "add_gear"}


def test_edited_applied_migration_is_refused(app, admin_conn, gear_migrations):
    with app.app_context():
        migrate.upgrade(gear_migrations)
        (gear_migrations / FIRST).write_text("CREATE TABLE gear (id bigint PRIMARY KEY);\n")
        write_migrations(gear_migrations, {"9003_more_gear.sql": "INSERT INTO gear (id, name) VALUES (2, 'x');\n"})
        with pytest.raises(MigrationError, match="9001"):
            migrate.upgrade(gear_migrations)
    assert "9003" not in recorded(admin_conn)


def test_failing_migration_rolls_back_and_records_nothing(app, admin_conn, gear_migrations):
    write_migrations(
        gear_migrations,
        {"9003_broken.sql": "CREATE TABLE half_done (id int);\nINSERT INTO gear (id, name) VALUES (2, NULL);\n"},
    )
    with app.app_context(), pytest.raises(psycopg2.errors.NotNullViolation):
        migrate.upgrade(gear_migrations)
    assert recorded(admin_conn) == {"9001": "create_gear", "9002": "add_gear"}
    assert not table_exists(admin_conn, "half_done")
    with app.app_context():
        # Fixed, it applies on the next run.
        write_migrations(gear_migrations, {"9003_broken.sql": "CREATE TABLE half_done (id int);\n"})
        assert migrate.upgrade(gear_migrations) == ["9003"]


def test_concurrent_upgrades_apply_each_file_exactly_once(make_app, admin_conn, tmp_path):
    directory = write_migrations(
        tmp_path / "migrations",
        {
            "9001_counter.sql": "CREATE TABLE applied (file text NOT NULL); SELECT pg_sleep(0.2);\n",
            "9002_one.sql": "INSERT INTO applied VALUES ('9002'); SELECT pg_sleep(0.1);\n",
            "9003_two.sql": "INSERT INTO applied VALUES ('9003');\n",
        },
    )
    apps = [make_app(), make_app()]  # two deploys, two pools
    start = threading.Barrier(2)

    def deploy():
        start.wait(5)
        return migrate.upgrade(directory)

    runners = [AppThread(app, deploy) for app in apps]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(30)
    assert [r.error for r in runners] == [None, None]
    applied = [version for runner in runners for version in runner.result]
    assert sorted(applied) == ["9001", "9002", "9003"]
    with admin_conn.cursor() as cur:
        cur.execute("SELECT file, count(*) FROM applied GROUP BY file ORDER BY file")
        assert cur.fetchall() == [("9002", 1), ("9003", 1)]
    assert list(recorded(admin_conn)) == ["9001", "9002", "9003"]


@pytest.mark.parametrize(
    "files",
    [
        {"9001-create.sql": "SELECT 1;"},
        {"901_create.sql": "SELECT 1;"},
        {"9001_Create.sql": "SELECT 1;"},
        {"9001_create.sql": "SELECT 1;", "9001_again.sql": "SELECT 1;"},
        {"9001_Create.py": "def upgrade(cur):\n    pass\n"},
        {"9001_create.sql": "SELECT 1;", "9001_again.py": "def upgrade(cur):\n    pass\n"},
    ],
    ids=["dash", "three-digits", "uppercase", "duplicate-version", "uppercase-python", "sql-and-python"],
)
def test_misnamed_migrations_are_refused_before_anything_runs(app, admin_conn, tmp_path, files):
    directory = write_migrations(tmp_path / "migrations", {"9000_first.sql": "CREATE TABLE first (id int);", **files})
    with app.app_context(), pytest.raises(MigrationError):
        migrate.upgrade(directory)
    assert recorded(admin_conn) == {}
    assert not table_exists(admin_conn, "first")


def test_a_recorded_migration_without_its_file_is_reported(app, tmp_path, caplog):
    (tmp_path / "9001_first.sql").write_text("CREATE TABLE t9001 (id int);")
    (tmp_path / "9002_second.sql").write_text("CREATE TABLE t9002 (id int);")
    with app.app_context():
        assert migrate.upgrade(tmp_path) == ["9001", "9002"]
        (tmp_path / "9002_second.sql").unlink()
        with caplog.at_level("WARNING", logger="apps.api.app.migrate"):
            assert migrate.upgrade(tmp_path) == []
    assert "migration 9002 is recorded in the database but has no file here" in caplog.text


FILL_GEAR = '''"""Fill gear from Python, as a data migration would."""


def upgrade(cur):
    """Insert two rows, then fail if told to."""
    cur.execute("INSERT INTO gear (id, name) VALUES (1, 'tent'), (2, 'stove')")
    cur.execute("SELECT count(*) FROM gear")
    if cur.fetchone()[0] != 2:
        raise RuntimeError("the rows should be visible inside the migration's transaction")
    FAIL
'''


def test_a_python_migration_runs_inside_its_transaction_and_rolls_back_with_it(app, admin_conn, tmp_path):
    directory = write_migrations(
        tmp_path / "migrations",
        {FIRST: "CREATE TABLE gear (id int PRIMARY KEY, name text NOT NULL);\n", "9002_fill_gear.py": FILL_GEAR},
    )
    with app.app_context(), pytest.raises(NameError, match="FAIL"):
        migrate.upgrade(directory)
    assert recorded(admin_conn) == {"9001": "create_gear"}
    with admin_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM gear")
        assert cur.fetchone() == (0,)
    write_migrations(directory, {"9002_fill_gear.py": FILL_GEAR.replace("    FAIL\n", "")})
    with app.app_context():
        assert migrate.upgrade(directory) == ["9002"]
        assert [m.kind for m in migrate.discover(directory)] == ["sql", "py"]
    assert recorded(admin_conn) == {"9001": "create_gear", "9002": "fill_gear"}
    with admin_conn.cursor() as cur:
        cur.execute("SELECT name FROM gear ORDER BY id")
        assert cur.fetchall() == [("tent",), ("stove",)]


def test_a_python_migration_without_upgrade_is_refused(app, admin_conn, tmp_path):
    directory = write_migrations(tmp_path / "migrations", {"9001_nothing.py": "VALUE = 1\n"})
    with app.app_context(), pytest.raises(MigrationError, match=r"9001_nothing\.py must define upgrade\(cursor\)"):
        migrate.upgrade(directory)
    assert recorded(admin_conn) == {}


# -- 0007: users' emails normalised ------------------------------------------------------


def migrations_before(version: str, directory: Path) -> Path:
    """Copy the project's migrations older than `version` into `directory`; return it."""
    directory.mkdir()
    for migration in migrate.discover():
        if migration.version < version:
            (directory / migration.filename).write_text(migration.text)
    return directory


def users_before_0007(url: str, password_hash: str, tmp_path: Path, emails: list[str]) -> None:
    """Migrate the database at `url` up to 0006 and insert users with these emails, as stored until then."""
    upgrade_database(url, migrations_before("0007", tmp_path / "before_0007"))
    with contextlib.closing(psycopg2.connect(url)) as conn:
        conn.autocommit = True
        for email in emails:
            insert_row(conn, "users", email=email, password_hash=password_hash, full_name="Old", role="staff")


def user_emails(url: str) -> list[str]:
    """Return the users' emails in id order."""
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT email FROM users ORDER BY id")
        return [row[0] for row in cur.fetchall()]


def test_0007_stores_existing_user_emails_normalised(make_database, password_hash, tmp_path):
    url = make_database()
    old = ["Ada@Example.COM", f"{fullwidth('BOB')}@example.com", "carol@example.com", "Straße@Example.com"]
    users_before_0007(url, password_hash, tmp_path, old)
    assert "0007" in upgrade_database(url)
    assert user_emails(url) == ["ada@example.com", "bob@example.com", "carol@example.com", "strasse@example.com"]
    app = create_app(app_config(url))
    try:
        client = app.test_client()
        for spelling in ("ADA@example.com", "Bob@Example.com", "STRASSE@example.com", "straße@example.com"):
            assert login(client, spelling).status_code == 200, spelling
    finally:
        database.close_pool(app)


def test_0007_refuses_users_whose_emails_normalise_to_one_address(make_database, password_hash, tmp_path):
    url = make_database()
    old = ["ada@example.com", f"{fullwidth('ada')}@example.com", "Straße@example.com", "STRASSE@example.com"]
    users_before_0007(url, password_hash, tmp_path, old)
    app = create_app(app_config(url))
    try:
        result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    finally:
        database.close_pool(app)
    assert result.exit_code != 0
    assert "cannot store users' emails normalised: users 1 ('ada@example.com') and 2 (" in result.output
    assert "share the address 'ada@example.com'" in result.output
    assert "users 3 ('Straße@example.com') and 4 ('STRASSE@example.com') share the address 'strasse@example.com'" in (
        result.output
    )
    assert "then run db upgrade again" in result.output
    # Nothing changed: 0007 is not recorded, and every email is as it was.
    assert user_emails(url) == old
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM schema_migrations WHERE version >= '0007'")
        assert cur.fetchone() == (0,)
