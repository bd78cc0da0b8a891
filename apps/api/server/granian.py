"""The app under granian: what gunicorn.conf.py's hooks do, done by each granian worker itself.

    granian --interface wsgi --workers $WEB_CONCURRENCY --blocking-threads $GUNICORN_THREADS \\
        --host $BIND_HOST --port $PORT <PRODUCTION_FLAGS> apps.api.wsgi:app

granian runs none of our code in its main process and offers a WSGI app no hooks; it
forks each worker, which then imports apps.api.wsgi (apps/api/app/compat/granian.py names
what this relies on). So the worker, while it imports the app, does what gunicorn's hooks
would:
- metrics: every worker of one granian shares a folder named after granian's main
  process (its pid and start time), made by the first worker to boot; the folders of
  granian processes that have gone are removed then (on_starting and on_exit);
- threads: a worker refuses to start with more --blocking-threads than
  DB_POOL_MAX_CONNECTIONS (on_starting); granian then stops, as gunicorn does;
- the pool: opened in the worker once the app is loaded, then the server's session
  timeouts are checked, refusing to start without them; the first worker of this granian
  checks the connection budget, counting granian's --workers (post_worker_init);
- exit: once granian has stopped the worker (SIGTERM: it answers the requests in flight,
  then returns), its pool is closed and its live gauges dropped (worker_exit, child_exit);
  a worker that is killed cannot, so the metrics drop the live gauges of any worker no
  longer running whenever they are read (metrics.forget_dead_workers).
The request line and request id are the app's own (logs.RequestLog), under any server.

Outside a granian worker (gunicorn, tests, flask run) nothing here does anything.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil

METRICS_VAR = "PROMETHEUS_MULTIPROC_DIR"
METRICS_FOLDER_PREFIX = "rentals-metrics-granian-"
# Made (O_EXCL) in the metrics folder by the worker that checks the connection budget: the first.
CAPACITY_CHECKED = "capacity-checked"

# The production command's options beyond the ones taken from the settings (README, Deployment):
#   --backlog 2048: connections the kernel queues per worker socket, as gunicorn's backlog.
#   --backpressure 1000: connections a worker serves at once, as gunicorn's worker_connections.
#       Past it granian stops accepting (it answers nothing, no 503): connections wait in the
#       kernel's backlog. Requests of accepted connections wait for a blocking thread.
#   --respawn-failed-workers: a worker that dies is replaced (else granian stops altogether).
#   --workers-kill-timeout 30: seconds a stopping worker gets to answer what it holds, as
#       gunicorn's graceful_timeout; past it, it is killed.
#   --workers-lifetime 6h: recycle a worker after this long (bounds slow leaks), as
#       gunicorn's max_requests; the new worker starts before the old one stops.
#   --respawn-interval 15: seconds granian waits, when it recycles a worker (lifetime, SIGHUP),
#       between starting the successor and stopping the old one. It does not wait for the
#       successor to be ready: were the successor still importing the app when the old one
#       closed its socket, connections to that port would find one worker fewer (both, on
#       one worker). Booting takes 1-8 s here; 15 s leaves a margin.
#   --http1-header-read-timeout 10000: ms a client gets to send a request's head, as
#       HTTP_REQUEST_READ_TIMEOUT_SECONDS under gunicorn (granian closes the connection, no 408).
#   --no-ws: no websockets on a WSGI app (granian says so at every start otherwise).
PRODUCTION_FLAGS = (
    "--backlog",
    "2048",
    "--backpressure",
    "1000",
    "--respawn-failed-workers",
    "--workers-kill-timeout",
    "30",
    "--workers-lifetime",
    "6h",
    "--respawn-interval",
    "15",
    "--http1-header-read-timeout",
    "10000",
    "--no-ws",
)
APP_TARGET = "apps.api.wsgi:app"

logger = logging.getLogger("apps.api.server.granian")


def command(executable: str, workers: int, threads: int, host: str, port: int) -> list[str]:
    """Return the production command line, granian run by `executable` (a Python) as `-m granian`."""
    return [
        executable,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--workers",
        str(workers),
        "--blocking-threads",
        str(threads),
        "--host",
        host,
        "--port",
        str(port),
        *PRODUCTION_FLAGS,
        APP_TARGET,
    ]


def in_worker() -> bool:
    """Return True in a process granian forked to serve (public APIs only: the app is not imported yet)."""
    return "granian" in sys.modules and multiprocessing.parent_process() is not None


def metrics_folder(granian_pid: int) -> Path:
    """Return the metrics folder of the granian whose main process is `granian_pid` (it need not exist)."""
    main = psutil.Process(granian_pid)
    return Path(tempfile.gettempdir()) / f"{METRICS_FOLDER_PREFIX}{main.pid}-{int(main.create_time() * 1000)}"


def before_import() -> None:
    """In a granian worker, before the app is imported: catch a SIGTERM sent while it boots; share the metrics folder.

    Call it before anything imports prometheus_client, which picks its multiprocess mode then.
    """
    if in_worker():
        _boot_stop.watch()
        share_metrics_folder()


def share_metrics_folder() -> None:
    """Point PROMETHEUS_MULTIPROC_DIR at the folder all workers of this granian share.

    An operator's PROMETHEUS_MULTIPROC_DIR is kept (emptying it before a start is then theirs).
    """
    if os.environ.get(METRICS_VAR):
        return
    folder = metrics_folder(os.getppid())
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    else:
        _remove_gone_folders(folder)
    os.environ[METRICS_VAR] = str(folder)


def _remove_gone_folders(ours: Path) -> None:
    # The folders of granian processes no longer running (a pid reused since has another start time).
    for folder in ours.parent.glob(f"{METRICS_FOLDER_PREFIX}*"):
        pid = folder.name.removeprefix(METRICS_FOLDER_PREFIX).split("-")[0]
        try:
            alive = pid.isdigit() and metrics_folder(int(pid)) == folder
        except psutil.Error:
            alive = False
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)


def worker_app(create_app: Callable[..., object]) -> object:
    """Build the app in a granian worker and do what gunicorn's hooks do for it (module docstring).

    Counts granian's --workers and --blocking-threads, not WEB_CONCURRENCY and
    GUNICORN_THREADS, wherever the app uses them. Raises SystemExit when the threads
    exceed the pool or the server's sessions lack the configured timeouts (granian stops),
    or when the worker was told to stop while it booted.
    """
    from apps.api.app.capacity import Budget
    from apps.api.app.compat import granian
    from apps.api.app.config import ConfigError
    from apps.api.app.metrics import forget_dead_workers_when_read
    from apps.api.app.models import database

    options = granian.server_options(sys.argv)
    try:
        app = create_app({"WEB_CONCURRENCY": options.workers, "GUNICORN_THREADS": options.blocking_threads})
    except ConfigError as exc:  # a respawned worker would refuse the same settings again
        logger.error("refusing to start: %s", exc)
        granian.stop_server()
    settings = app.config["SETTINGS"]
    problem = Budget.from_settings(settings).threads_above_pool()
    if problem:
        problem = problem.replace("GUNICORN_THREADS", "granian's --blocking-threads")
        logger.error("refusing to start: %s; extra threads would only wait for a connection", problem)
        granian.stop_server()
    if not options.backpressure_set:
        logger.warning("granian runs without --backpressure: each worker accepts %s connections", options.backpressure)
    forget_dead_workers_when_read()
    granian.at_worker_exit(lambda: _close(app))
    database.open_pool(app)
    try:
        database.check_session_timeouts(app)
    except database.TimeoutsNotApplied as exc:
        logger.error("refusing to start: %s", exc)
        granian.stop_server()
    except database.DatabaseUnavailable as exc:
        logger.warning("could not check the server's session timeouts: %s", exc)
    if _first_worker():
        try:
            database.check_capacity(app)
        except database.DatabaseUnavailable as exc:
            logger.warning("could not check max_connections: %s", exc)
    if _boot_stop.requested:
        logger.info("worker %s was told to stop while it booted: stopping", os.getpid())
        raise SystemExit(0)  # the finalizer closes the pool
    return app


class _StopDuringBoot:
    """Remembers a SIGTERM that reaches the worker while it imports the app.

    Until granian sets the worker's own handlers (once the app is loaded) the worker has a
    copy of the main process's, which only sets a flag in that copy: a SIGTERM then (granian
    recycling a worker whose successor is still booting, or stopping) was lost, and the
    worker served on until --workers-kill-timeout killed it.
    """

    def __init__(self) -> None:
        self.requested = False

    def watch(self) -> None:
        """Catch SIGTERM and SIGINT from now until granian sets its handlers."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True


_boot_stop = _StopDuringBoot()


def _first_worker() -> bool:
    """Return True in the first worker of this granian to get here (always without a metrics folder)."""
    folder = os.environ.get(METRICS_VAR)
    if not folder:
        return True
    try:
        os.close(os.open(os.path.join(folder, CAPACITY_CHECKED), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _close(app: object) -> None:
    """Close this worker's pool and drop its live gauges: it has stopped serving."""
    from prometheus_client import multiprocess

    from apps.api.app.models import database

    try:
        database.close_pool(app)
    finally:
        folder = os.environ.get(METRICS_VAR)
        if folder:
            multiprocess.mark_process_dead(os.getpid(), folder)
