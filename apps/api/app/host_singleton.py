"""One process per host for work that must not run once per worker: whoever holds a lock file.

Every gunicorn worker of a host sees the same folder (PROMETHEUS_MULTIPROC_DIR). A worker
that wants to do host-wide work calls `HostSingleton.acquire()`, which never blocks: an
exclusive `flock` on a file in that folder, taken if free. The kernel releases the lock
when the holder's descriptor is closed, which happens however the holder ends (exit,
SIGKILL, out of memory), so another worker takes over at its next try; nobody has to
notice the death. The holder writes its pid into the file, for people and tests.

flock belongs to the open file description, which a fork shares: a child must never
believe it holds its parent's lock, so it forgets it (forking.after_fork_in_child).

`HostJob` runs a job every few seconds in whichever process holds such a lock: what the
metrics use to read PgBouncer's console and to probe the database once per host.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable

from .forking import after_fork_in_child

logger = logging.getLogger(__name__)

_singletons: weakref.WeakSet[HostSingleton] = weakref.WeakSet()


@after_fork_in_child
def _forget_inherited_locks() -> None:
    for singleton in list(_singletons):
        singleton._after_fork_in_child()


class HostSingleton:
    """The lock that makes one process of a host do a job; `path` None means this process is the host."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._fd: int | None = None
        self._mutex = threading.Lock()
        _singletons.add(self)

    @property
    def held(self) -> bool:
        """Return True while this process holds the lock (always, without a folder)."""
        return self.path is None or self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if no other process holds it; return True while this process holds it. Never blocks."""
        if self.path is None:
            return True
        with self._mutex:
            if self._fd is not None:
                return True
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:  # the folder is gone: the server is stopping
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by another process (EWOULDBLOCK)
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return True

    def release(self) -> None:
        """Give the lock up, for another process to take."""
        with self._mutex:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _after_fork_in_child(self) -> None:
        # Closing the child's copy of the descriptor leaves the parent's lock in place.
        self._mutex = threading.Lock()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class HostJob:
    """Runs `job` every `interval` seconds in one process per host: the one holding the lock at `path`.

    Every process calls `tick()` often (the pools' maintenance threads, about once a
    second); the lock holder (HostSingleton; without a folder, `path` None, this process)
    starts the job in a thread of its own when one is due and none is running, so a job
    that blocks (an unreachable server) never holds the caller. The first run comes at
    the first tick; when the holder dies, the next process to tick takes over and runs at
    once, logging `took_over` (a %s for its pid).
    """

    def __init__(self, path: str | None, interval: float, job: Callable[[], None], name: str, took_over: str) -> None:
        self.singleton = HostSingleton(path)
        self.interval = interval
        self._job = job
        self._name = name
        self._took_over = took_over
        self._next_run = 0.0
        self._running = threading.Lock()

    def tick(self) -> None:
        """Start the job in the background if this process runs it for the host and it is due; never blocks."""
        now = time.monotonic()
        if now < self._next_run or self._running.locked():
            return
        was_holder = self.singleton.held
        if not self.singleton.acquire():
            return
        if not was_holder:
            logger.info(self._took_over, os.getpid())
        self._next_run = now + self.interval
        threading.Thread(target=self._run, name=self._name, daemon=True).start()

    def _run(self) -> None:
        with self._running:
            self._job()

    def close(self, wait: float = 0.0) -> None:
        """Run the job no more, wait up to `wait` s for a run under way to end, and let another process take over."""
        self._next_run = math.inf
        if self._running.acquire(timeout=wait):
            self._running.release()
        self.singleton.release()


def holder(path: str | os.PathLike[str]) -> int | None:
    """Return the pid the last holder wrote into the lock file, or None (no file, or empty)."""
    try:
        with open(path) as lock_file:
            text = lock_file.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None
