"""A bad setting stops every `flask --app apps.api.wsgi` command with its sentence alone and exit status 2.

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


@pytest.mark.parametrize(
    "command",
    [["--help"], ["routes"], ["db", "upgrade"], ["users", "create", "--email", "new@example.com"]],
    ids=" ".join,
)
def test_flask_command_refuses_a_bad_setting_with_its_sentence_alone(command):
    env = {**os.environ, **app_config(UNREACHABLE_URL, DB_POOL_MAX_CONNECTIONS="abc")}
    result = subprocess.run(
        [*FLASK_COMMAND, *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert refusal_lines(result.stderr) == ["DB_POOL_MAX_CONNECTIONS must be a whole number, got 'abc'."]
    assert result.stdout == ""
