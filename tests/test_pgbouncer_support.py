"""devtools/pgbouncer.py: a real PgBouncer in transaction mode in front of the real PostgreSQL.

These pin what PgBouncer does, not what the app does behind it: one server connection
serves several clients in turn, and so whatever a client leaves in the session (a `SET`)
reaches the next client. That is why the app must never set session state behind it,
and why PgBouncer must refuse the `options` startup parameter rather than drop it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import threading

import psutil
import psycopg2
import pytest

from devtools.debian import DebianProgram, ProgramUnavailable
from devtools.embedded_pg import service_user
from devtools.services import accepts_connections
from tests.helpers import dbname_of, wait_until

pytestmark = pytest.mark.pgbouncer


def connect(dsn: str, *, autocommit: bool = True) -> psycopg2.extensions.connection:
    """Open a connection (through PgBouncer) in autocommit: each statement its own transaction."""
    conn = psycopg2.connect(dsn, connect_timeout=5)
    conn.autocommit = autocommit
    return conn


def one(conn: psycopg2.extensions.connection, sql: str) -> object:
    """Run `sql` and return the first column of its first row."""
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_a_connection_through_pgbouncer_reaches_the_server(make_pgbouncer, make_database, pg_server):
    dbname = dbname_of(make_database())
    bouncer = make_pgbouncer()
    conn = connect(bouncer.dsn(dbname))
    try:
        assert one(conn, "SELECT current_database()") == dbname
        assert one(conn, "SELECT inet_server_port()") == pg_server.port
    finally:
        conn.close()
    config = {row["key"]: row["value"] for row in bouncer.admin("SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert config["ignore_startup_parameters"] == "extra_float_digits"
    assert config["server_reset_query"] == ""
    if os.geteuid() == 0:
        assert psutil.Process(bouncer.pid).username() == service_user()


def test_startup_options_are_refused_not_silently_dropped(make_pgbouncer):
    bouncer = make_pgbouncer()
    with pytest.raises(psycopg2.OperationalError, match="unsupported startup parameter: options"):
        psycopg2.connect(bouncer.dsn("postgres"), options="-c statement_timeout=5000", connect_timeout=5)


def test_two_clients_share_one_server_connection_in_turn(make_pgbouncer, make_database):
    dbname = dbname_of(make_database())
    bouncer = make_pgbouncer(default_pool_size=1)
    first, second = connect(bouncer.dsn(dbname)), connect(bouncer.dsn(dbname))
    try:
        assert one(first, "SELECT pg_backend_pid()") == one(second, "SELECT pg_backend_pid()")
        (pool,) = bouncer.pools(dbname)
        assert pool["cl_active"] == 2
        assert pool["sv_active"] + pool["sv_idle"] + pool["sv_used"] == 1

        # While the first client is inside a transaction, the second waits for the server connection.
        first.autocommit = False
        held_pid = one(first, "SELECT pg_backend_pid()")
        answers: list[object] = []
        waiter = threading.Thread(target=lambda: answers.append(one(second, "SELECT pg_backend_pid()")), daemon=True)
        waiter.start()
        assert wait_until(lambda: bouncer.pools(dbname)[0]["cl_waiting"] == 1), bouncer.pools(dbname)
        assert answers == []
        first.commit()
        waiter.join(timeout=5)
        assert answers == [held_pid]
        assert bouncer.pools(dbname)[0]["cl_waiting"] == 0
    finally:
        first.close()
        second.close()


def test_a_session_set_leaks_to_the_next_client_in_transaction_mode(make_pgbouncer, make_database):
    dbname = dbname_of(make_database())
    bouncer = make_pgbouncer(default_pool_size=1)
    first, second = connect(bouncer.dsn(dbname)), connect(bouncer.dsn(dbname))
    try:
        assert one(second, "SHOW statement_timeout") == "0"
        # A session-level SET stays on the server connection, which the next client gets.
        one(first, "SET statement_timeout = '4321ms'; SELECT 1")
        assert one(second, "SHOW statement_timeout") == "4321ms"
        one(second, "RESET statement_timeout; SELECT 1")
        # SET LOCAL ends with its transaction: nothing is left for the next client.
        first.autocommit = False
        one(first, "SET LOCAL statement_timeout = '1234ms'; SHOW statement_timeout")
        first.commit()
        assert one(second, "SHOW statement_timeout") == "0"
    finally:
        first.close()
        second.close()


def test_monitoring_user_reads_pools_and_stats_and_reloads_settings(make_pgbouncer):
    bouncer = make_pgbouncer()
    conn = connect(bouncer.dsn("postgres"))
    try:
        one(conn, "SELECT 1")
    finally:
        conn.close()
    assert [row["pool_mode"] for row in bouncer.pools("postgres")] == ["transaction"]
    assert "postgres" in {row["database"] for row in bouncer.admin("SHOW STATS")}
    bouncer.reload(query_timeout=7)
    assert {row["key"]: row["value"] for row in bouncer.admin("SHOW CONFIG")}["query_timeout"] == "7"


def test_restart_serves_on_the_same_port_and_stop_leaves_nothing_running(make_pgbouncer):
    bouncer = make_pgbouncer()
    first_pid, port = bouncer.pid, bouncer.port
    bouncer.restart()
    assert bouncer.port == port and bouncer.pid != first_pid
    assert not psutil.pid_exists(first_pid)
    conn = connect(bouncer.dsn("postgres"))
    try:
        assert one(conn, "SELECT 1") == 1
    finally:
        conn.close()
    second_pid = bouncer.pid
    bouncer.stop()
    assert not bouncer.running()
    assert not psutil.pid_exists(second_pid)
    assert not accepts_connections(bouncer.host, port)


def test_a_missing_program_without_root_gives_the_command_to_run():
    code = (
        "from devtools.debian import DebianProgram, ProgramUnavailable\n"
        "try:\n"
        "    DebianProgram('rentals-no-such-program', 'rentals-no-such-package').ensure()\n"
        "except ProgramUnavailable as exc:\n"
        "    print(exc)\n"
    )
    if os.geteuid() != 0:
        with pytest.raises(ProgramUnavailable) as caught:
            DebianProgram("rentals-no-such-program", "rentals-no-such-package").ensure()
        message = str(caught.value)
    else:
        # As root it would install; ask as the non-root service user, as a developer would,
        # with a system Python it may run (devtools/debian.py needs only the standard library).
        python = shutil.which("python3", path="/usr/local/bin:/usr/bin")
        if python is None:
            pytest.skip("no system python3 for the non-root service user to run")
        user = pwd.getpwnam(service_user())
        result = subprocess.run(
            [python, "-c", code],
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            cwd=os.getcwd(),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        message = result.stdout.strip()
    assert message == (
        "rentals-no-such-program is not installed and installing it needs root: "
        "sudo apt-get install -y rentals-no-such-package"
    )
