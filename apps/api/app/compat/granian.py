"""granian internals the app relies on when granian serves it (apps/api/server/granian.py).

granian has no server hooks for a WSGI app run from its command line, so the app does in
each worker what gunicorn.conf.py's hooks do. What that rests on:
- granian starts each worker as a multiprocessing Process, forked
  (multiprocessing's default on Linux before Python 3.14) from the main process, which
  never imports the app: each worker imports it, after the fork. A forked worker's
  sys.argv is therefore the command line granian was started with.
- That command line is parsed by `granian.cli.cli`, a click command; its parameters are
  the worker count, the blocking threads (the WSGI app's threads), backpressure, ...
  Unset, granian's Server derives backpressure as backlog // workers and a WSGI worker's
  blocking threads as backpressure // 2.
- A WSGI worker's target returns once its server stopped (SIGTERM) and answered the
  requests in flight; the process then ends through multiprocessing, which runs its
  finalizers (multiprocessing.util.Finalize) but never atexit's handlers.
- SIGTERM to the main process stops every worker that way, then granian.
"""

from __future__ import annotations

import inspect
import multiprocessing.util
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from . import require

DISTRIBUTION = "granian"
CHECKED = ">=2.8,<2.9"

# Before the finalizers of objects multiprocessing tracks itself (priority None or lower).
EXIT_PRIORITY = 100


@dataclass(frozen=True)
class ServerOptions:
    """What granian's command line says about the workers, with granian's defaults filled in."""

    workers: int
    blocking_threads: int
    backpressure: int
    backpressure_set: bool
    workers_lifetime: int | None
    respawn_failed_workers: bool
    workers_kill_timeout: int | None


def server_options(argv: Sequence[str]) -> ServerOptions:
    """Return the options granian's command line `argv` (its program name first) sets, as granian reads them."""
    from granian.cli import cli

    params = cli.make_context("granian", list(argv[1:]), resilient_parsing=True).params
    workers = max(1, params["workers"])
    backpressure = max(1, params["backpressure"] or params["backlog"] // workers)
    threads = params["blocking_threads"]
    return ServerOptions(
        workers=workers,
        blocking_threads=threads if threads is not None else max(1, backpressure // 2),
        backpressure=backpressure,
        backpressure_set=params["backpressure"] is not None,
        workers_lifetime=params["workers_lifetime"],
        respawn_failed_workers=bool(params["respawn_failed_workers"]),
        workers_kill_timeout=params["workers_kill_timeout"],
    )


def at_worker_exit(hook: Callable[[], None]) -> None:
    """Run `hook` when this worker process ends after its server stopped (not when it is killed)."""
    multiprocessing.util.Finalize(None, hook, exitpriority=EXIT_PRIORITY)


def stop_server() -> NoReturn:
    """Stop granian altogether from one of its workers, and this worker with it.

    A worker that merely exits is replaced (--respawn-failed-workers), and granian's
    crash-loop check misses workers that fail in turn; SIGTERM to the main process stops
    every worker. granian's exit code is then 1 if it saw this worker exit before the
    signal, 0 otherwise: the log's "refusing to start" line is what tells.
    """
    os.kill(os.getppid(), signal.SIGTERM)
    raise SystemExit(1)


def verify() -> None:
    """Raise IncompatibleVersion unless granian still starts and parses its workers as relied on above."""
    from granian.server import common, mp

    spawn = inspect.getsource(mp.WorkerProcess._spawn)
    require(
        "multiprocessing.get_context(self._spawn_method).Process" in spawn,
        DISTRIBUTION,
        "workers started as multiprocessing Processes (whose finalizers run at their end)",
    )
    init = inspect.getsource(common.AbstractServer.__init__)
    require(
        "backpressure or self.backlog // self.workers" in init and "(self.backpressure // 2)" in init,
        DISTRIBUTION,
        "the defaults backpressure = backlog // workers and blocking threads = backpressure // 2",
    )
    argv = ["granian", "--interface", "wsgi", "--workers", "3", "--blocking-threads", "4", "--backlog", "2048"]
    options = server_options([*argv, "--workers-lifetime", "2m", "--respawn-failed-workers", "apps.api.wsgi:app"])
    require(
        options == ServerOptions(3, 4, 682, False, 120, True, None),
        DISTRIBUTION,
        "the command-line options --workers, --blocking-threads, --backlog, --workers-lifetime and"
        " --respawn-failed-workers",
    )
