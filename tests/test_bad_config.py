"""A bad setting stops every `flask --app apps.api.wsgi` command with its sentence alone and exit status 2,
and a database that does not answer stops a command with a sentence too.

gunicorn's side is in test_gunicorn.py (test_gunicorn_refuses_bad_settings_before_starting_workers).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import app_config, refusal_lines
from tests.support.gunicorn import ROOT

pytestmark = pytest.mark.slow

FLASK_COMMAND = [sys.executable, "-m", "flask", "--app", "apps.api.wsgi"]
# Nothing listens there: a command that got as far as connecting would fail differently.
UNREACHABLE_URL = "postgresql://rentals:secret@127.0.0.1:9/rentals"


def flask(command: list[str], **settings: str) -> subprocess.CompletedProcess:
    """Run a flask command of the app on UNREACHABLE_URL with the test settings and these; return it finished."""
    env = {**os.environ, **app_config(UNREACHABLE_URL, **settings), "NEW_USER_PASSWORD": "a-long-password"}
    return subprocess.run(
        [*FLASK_COMMAND, *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


# Each command loads the app first: a sample of them, --help included (flask lists the app's
# commands there and printed the traceback, then exited 0).
@pytest.mark.parametrize(
    "command", [["--help"], ["db", "upgrade"], ["users", "create", "--email", "new@example.com"]], ids=" ".join
)
def test_flask_command_refuses_a_bad_setting_with_its_sentence_alone(command):
    result = flask(command, DB_POOL_MAX_CONNECTIONS="abc")
    assert result.returncode == 2, result.stdout + result.stderr
    assert refusal_lines(result.stderr) == ["DB_POOL_MAX_CONNECTIONS must be a whole number, got 'abc'."]
    assert result.stdout == ""


def test_flask_command_on_an_unreachable_database_says_so_without_a_traceback():
    result = flask(["users", "create", "--email", "new@example.com"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert refusal_lines(result.stderr) == [
        "Error: the database cannot serve this command (the database is unreachable; retrying shortly);"
        " check that PostgreSQL runs where DATABASE_URL points"
    ]
