"""A primary failing over to its streaming replica: the URL that lists both, and the steps of a failover.

The pairs come from tests/support/replicas.py; these helpers make one synchronous,
promote its replica, and bring the old primary back read-only.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from devtools.embedded_pg import EmbeddedPostgres
from tests.support.replicas import ReplicaPair, replica_pair


@contextlib.contextmanager
def _pair_folder() -> Iterator[Path]:
    """Return a new folder for a replica pair, removed after.

    Not pytest's tmp_path: every pytest session that starts on the machine makes
    /tmp/pytest-of-<user> private again (0700), and the servers run as another user.
    """
    folder = Path(tempfile.mkdtemp(prefix="rentals-failover-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def temporary_pair() -> Iterator[ReplicaPair]:
    """Run a primary with the migrated database and a replica of it in a folder of their own; remove both after."""
    with _pair_folder() as folder, replica_pair(folder) as pair:
        yield pair


def failover_url(pair: ReplicaPair) -> str:
    """Return DATABASE_URL listing the primary, then the replica, for whichever takes writes."""
    parts = urlsplit(pair.primary_url)
    hosts = f"{pair.primary.host}:{pair.primary.port},{pair.replica.host}:{pair.replica.port}"
    netloc = f"{parts.username}:{parts.password}@{hosts}"
    return urlunsplit(parts._replace(netloc=netloc, query="target_session_attrs=read-write"))


def make_synchronous(pair: ReplicaPair) -> None:
    """Make the replica a synchronous standby: a commit returns once the replica has flushed it."""
    pair.primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
    pair.primary.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while pair.primary.execute("SELECT sync_state FROM pg_stat_replication") != [("sync",)]:
        assert time.monotonic() < deadline, "the replica did not become a synchronous standby"
        time.sleep(0.05)


def promote(pair: ReplicaPair) -> None:
    """Promote the replica; fail with pg_ctl's words and the replica's log when it does not."""
    try:
        pair.replica.promote()
    except subprocess.CalledProcessError as exc:
        log = pair.replica.log_file.read_text(errors="replace")[-3000:]
        raise AssertionError(f"pg_ctl promote failed: {exc.stdout} {exc.stderr}\n--- replica log ---\n{log}") from exc


def restart_read_only(server: EmbeddedPostgres) -> None:
    """Start the old primary again, read-only (a real one would come back as a standby, after pg_rewind)."""
    server.settings = {**server.settings, "default_transaction_read_only": "on"}
    server.start()
