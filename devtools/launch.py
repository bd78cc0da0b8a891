"""What `make run` and `make cluster` share: the development database, the printed lines, and a
supervisor that stops every process they start, in order, whatever stops the launcher.

The launcher runs in the terminal's process group; everything it starts runs in a session
of its own. So a Ctrl-C reaches the launcher alone, exactly as a SIGINT or SIGTERM sent to
its pid does, and the launcher sends each child ONE stop signal, in the reverse order of
their start. One matters: gunicorn's gthread worker deadlocks when a second SIGINT arrives
while it handles the first (its ThreadPoolExecutor's shutdown lock is taken again).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

from apps.api.server import granian
from devtools.embedded_pg import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
# The production command (README), run from ROOT by this virtualenv's Python.
GUNICORN_COMMAND = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "apps.api.wsgi:app"]
# gunicorn's graceful_timeout (30 s) plus a margin: past it, its process group is killed.
# granian's --workers-kill-timeout is the same 30 s.
GUNICORN_STOP_GRACE = 40
# `SERVER=granian make run` serves the app with granian (README, Deployment); gunicorn by default.
SERVERS = ("gunicorn", "granian")

if TYPE_CHECKING:
    from apps.api.app.config import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")


def server_command(settings: Settings) -> tuple[str, list[str]]:
    """Return the server SERVER names (gunicorn unless set) and its production command for `settings`.

    Raises RuntimeError naming the choices when SERVER is something else.
    """
    server = os.environ.get("SERVER") or "gunicorn"
    if server not in SERVERS:
        raise RuntimeError(f"SERVER={server!r} is not one of {', '.join(SERVERS)}")
    if server == "gunicorn":
        return server, GUNICORN_COMMAND
    return server, granian.command(
        sys.executable, settings.web_concurrency, settings.gunicorn_threads, settings.bind_host, settings.port
    )


def dev_folder() -> Path:
    """Return the folder that keeps the development database between runs (DEV_DATA_DIR, else .devdb/)."""
    return Path(os.environ.get("DEV_DATA_DIR") or ROOT / ".devdb").resolve()


def served_address(bind_host: str, port: int) -> str:
    """Return the URL a client on this machine reaches a server bound to bind_host:port at."""
    host = "127.0.0.1" if bind_host in ("", "0.0.0.0") else bind_host  # noqa: S104 (a comparison, not a bind)
    return f"http://{host}:{port}"


def env_port(name: str, default: int) -> int:
    """Return the port in environment variable `name`, or `default`."""
    return int(os.environ.get(name) or default)


# -- stopping everything, whatever stops us ---------------------------------------------


class StopRequested(Exception):
    """SIGINT or SIGTERM reached the launcher: stop everything, in order."""


class Supervisor:
    """Start processes and services, wait, and stop them all in reverse order on the way out.

    As a context manager it turns SIGINT and SIGTERM into StopRequested (swallowed on exit:
    a requested stop is a clean one), and its exit stops everything it started, the last
    started first. While it stops them further signals are ignored, so each child gets
    exactly one stop signal. Starting a process is shielded from signals: a signal
    arriving then is acted on once the process is registered, so no child escapes.
    """

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._watched: list[tuple[str, subprocess.Popen]] = []
        self._shields = 0
        self._pending: str | None = None
        self._stopping = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Supervisor:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stopping = True
        if exc_type is StopRequested:
            logger.info("%s: stopping everything", exc)
        try:
            self._stack.close()
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        return exc_type is StopRequested

    def _on_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            logger.info("%s: already stopping", name)
        elif self._shields:
            self._pending = self._pending or name
        else:
            self._stopping = True
            raise StopRequested(name)

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Hold SIGINT and SIGTERM back for the block; act on one that came once it ends."""
        self._shields += 1
        try:
            yield
        finally:
            self._shields -= 1
        if not self._shields and self._pending and not self._stopping:
            self._stopping = True
            raise StopRequested(self._pending)

    def enter(self, service: AbstractContextManager[T]) -> T:
        """Start a service (its __enter__) shielded from signals; it is stopped (its __exit__) on the way out."""
        with self.shielded():
            return self._stack.enter_context(service)

    def callback(self, function: Callable[[], object]) -> None:
        """Call `function` on the way out, before whatever was registered earlier."""
        self._stack.callback(function)

    def start(
        self, names: Sequence[str], commands: Sequence[Sequence[str]], *, envs: Sequence[Mapping[str, str]]
    ) -> list[subprocess.Popen]:
        """Start one process per command, each in a session of its own, from ROOT with its environment.

        Their output goes to ours. On the way out they are stopped together: one SIGTERM
        each (gunicorn's graceful stop), then a SIGKILL to any process group still there
        after GUNICORN_STOP_GRACE seconds. `wait()` watches them.
        """
        processes: list[subprocess.Popen] = []
        with self.shielded():
            self._stack.callback(stop_together, processes)
            for name, command, env in zip(names, commands, envs, strict=True):
                process = subprocess.Popen(
                    list(command), cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL, start_new_session=True
                )
                processes.append(process)
                self._watched.append((name, process))
        return processes

    def wait(self) -> int:
        """Block until a started process exits (return its exit code) or a signal stops us (StopRequested)."""
        while True:
            for name, process in self._watched:
                code = process.poll()
                if code is not None:
                    logger.warning("%s (pid %s) exited with %s; stopping the rest", name, process.pid, code)
                    return 128 - code if code < 0 else code
            time.sleep(0.2)


def stop_together(processes: Sequence[subprocess.Popen], grace: float = GUNICORN_STOP_GRACE) -> None:
    """Send each running process one SIGTERM, wait for them all, and kill the groups of those still there."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("pid %s did not stop within %.0f s; killing its process group", process.pid, grace)
            # Not reaped yet, so its pid (its group's id) cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_serving(base: str, processes: Sequence[subprocess.Popen], timeout: float = 60) -> None:
    """Wait until GET {base}/api/health answers 200; raise RuntimeError if one of `processes` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"pid {process.pid} exited with {process.returncode} before {base} served")
        if health_status(base) == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answered on {base} within {timeout:.0f} s")
        time.sleep(0.1)


def health_status(base: str) -> int | None:
    """Return the status of GET {base}/api/health, or None when nothing answers."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
    try:
        conn.request("GET", "/api/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


# -- the development database --------------------------------------------------------------


@dataclass(frozen=True)
class AppDatabase:
    """The app's role and database on the development server."""

    url: str
    role: str
    password: str
    dbname: str


class DevDatabase:
    """The embedded PostgreSQL of `make run` and `make cluster`: its data kept in dev_folder() between runs.

    As a context manager: start the server (stopping one an earlier run left up), and
    stop it on exit. `prepare()` creates the app's role and database from .env.dev's
    DATABASE_URL, applies the migrations and seeds the demo data on first start.
    """

    def __init__(self, folder: Path | None = None, port: int | None = None) -> None:
        self.folder = folder or dev_folder()
        self.port = port or env_port("DEV_DB_PORT", 54329)
        self.server = EmbeddedPostgres(self.folder / "data", port=self.port)
        # The demo admin's login, kept beside the data (ignored by git) so every start can print it.
        self.demo_login_file = self.folder / "demo-admin.json"

    def __enter__(self) -> DevDatabase:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.server.running():
            logger.info("a database from an earlier run is still up; restarting it")
            self.server.stop()
        try:
            self.server.start()
        except BaseException:
            self.server.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop()
        print("database stopped", flush=True)

    def app_database(self) -> AppDatabase:
        """Return .env.dev's role, password and database, on this server."""
        from apps.api.app.config import load_settings

        parts = urlsplit(load_settings({"APP_ENV": "dev"}).database_url)
        netloc = f"{parts.username}:{parts.password}@{self.server.host}:{self.port}"
        return AppDatabase(
            urlunsplit(parts._replace(netloc=netloc)),
            parts.username or "rentals",
            parts.password or "",
            parts.path.lstrip("/") or "rentals",
        )

    def prepare(self, *, timeouts_on_role: bool = False) -> tuple[AppDatabase, dict | None]:
        """Create the role and database, migrate, seed on first start; return them and the demo login (or None).

        `timeouts_on_role`: also make the configured timeouts the role's defaults (`flask db
        apply-timeouts`), which the app needs behind PgBouncer (DB_POOLER=pgbouncer).
        """
        target = self.app_database()
        self.server.ensure_role_and_database(target.role, target.password, target.dbname)
        demo = _migrate_and_seed(target.url, timeouts_on_role)
        if demo:
            self.demo_login_file.write_text(json.dumps(demo))
            self.demo_login_file.chmod(0o600)
        elif self.demo_login_file.exists():
            demo = json.loads(self.demo_login_file.read_text())
        return target, demo


def _migrate_and_seed(url: str, timeouts_on_role: bool) -> dict | None:
    from apps.api.app import create_app, migrate, seed
    from apps.api.app.models import database

    app = create_app({"APP_ENV": "dev", "DATABASE_URL": url})
    try:
        with app.app_context():
            applied = migrate.upgrade()
            print(f"migrations: {'applied ' + ', '.join(applied) if applied else 'up to date'}", flush=True)
            if timeouts_on_role:
                timeouts = database.apply_session_timeouts()
                print("timeouts on the role: " + ", ".join(f"{k} = {ms} ms" for k, ms in timeouts.items()), flush=True)
            return seed.seed_demo_if_empty()
    finally:
        database.close_pool(app)


# -- what the launchers print ---------------------------------------------------------------


def banner(
    base: str, health_token: str, demo: dict | None, database_url: str, *, title: str, details: Sequence[str] = ()
) -> str:
    """Return the lines a launcher prints once it serves on `base`: curl lines and logins.

    The demo admin's login when `demo` is known, and the command that makes an admin of
    your own on `database_url` (the app's database, whatever port DEV_DB_PORT gave it).
    """
    lines = [
        "",
        title,
        *details,
        f"  curl {base}/api/health",
        f"  curl -H 'Authorization: Bearer {health_token}' {base}/api/health/db",
        f"  curl -H 'Authorization: Bearer {health_token}' {base}/api/health/db/test",
    ]
    if demo:
        lines += [
            f"Demo admin: {demo['email']} / {demo['password']}",
            f"  curl -X POST {base}/api/auth/login -H 'Content-Type: application/json' "
            f"""-d '{{"email": "{demo["email"]}", "password": "{demo["password"]}"}}'""",
        ]
    else:
        lines.append("No demo login on record.")
    lines += [
        "An admin of your own: while this runs, in another terminal:",
        # With the URL: the command reads .env.dev otherwise, whose port is DEV_DB_PORT's default.
        f"  DATABASE_URL={shlex.quote(database_url)} .venv/bin/flask --app apps.api.wsgi users create"
        " --email you@example.com --role admin",
    ]
    return "\n".join(lines) + "\n"
