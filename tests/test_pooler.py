"""Behind a pooler: no startup options, the timeouts on the role, and a start refused when they are missing.

These run against PostgreSQL directly; a session that did not get the startup options is
what PgBouncer in transaction mode gives the app, so they pin the same checks.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from apps.api.app.models import database
from apps.api.app.models.database import TimeoutsNotApplied, check_session_timeouts
from devtools.embedded_pg import free_port
from tests.helpers import app_config
from tests.support.gunicorn import GUNICORN_COMMAND, ROOT

TIMEOUTS = {"DB_STATEMENT_TIMEOUT_MS": 15000, "DB_LOCK_TIMEOUT_MS": 5000, "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": 30000}


def test_without_a_pooler_the_timeouts_arrive_with_the_connection(make_app, app_role_url):
    app = make_app(DATABASE_URL=app_role_url, **TIMEOUTS)
    assert check_session_timeouts(app) == {
        "statement_timeout": 15000,
        "lock_timeout": 5000,
        "idle_in_transaction_session_timeout": 30000,
    }


def test_pooler_mode_sends_no_startup_options_and_refuses_sessions_without_the_timeouts(make_app, app_role_url):
    app = make_app(DATABASE_URL=app_role_url, DB_POOLER="pgbouncer", **TIMEOUTS)
    with pytest.raises(TimeoutsNotApplied) as caught:
        check_session_timeouts(app)
    message = str(caught.value)
    for name, setting in (("statement_timeout", "DB_STATEMENT_TIMEOUT_MS"), ("lock_timeout", "DB_LOCK_TIMEOUT_MS")):
        assert f"{name} is 0 ms but {setting} asks for" in message
    assert "flask --app apps.api.wsgi db apply-timeouts" in message
    assert message.endswith(".")


def test_apply_timeouts_puts_them_on_the_role_for_new_sessions(make_app, app_role_url, admin_conn):
    app = make_app(DATABASE_URL=app_role_url, DB_POOLER="pgbouncer", **TIMEOUTS)
    result = app.test_cli_runner().invoke(args=["db", "apply-timeouts"])
    assert result.exit_code == 0, result.output
    assert "statement_timeout = 15000 ms" in result.output
    database.close_pool(app)  # the sessions opened before keep their values
    assert check_session_timeouts(make_app(DATABASE_URL=app_role_url, DB_POOLER="pgbouncer", **TIMEOUTS))
    # On this role in this database only: the superuser's sessions are untouched.
    with admin_conn.cursor() as cur:
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone()[0] == "0"


@pytest.mark.slow
def test_gunicorn_refuses_to_start_when_the_sessions_lack_the_timeouts(app_role_url):
    env = {**os.environ, **app_config(app_role_url, PORT=free_port(), DB_POOLER="pgbouncer", GUNICORN_THREADS=4)}
    result = subprocess.run(GUNICORN_COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, timeout=45)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "refusing to start: the server's sessions do not run with the configured timeouts" in output
    assert "Worker failed to boot" in output
