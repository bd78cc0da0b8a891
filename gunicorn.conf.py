"""gunicorn settings for the Rentals API.

    gunicorn -c gunicorn.conf.py apps.api.wsgi:app

Values come from the app's own settings (apps/api/app/config.py: env vars, then
.env.<APP_ENV>), so WEB_CONCURRENCY, GUNICORN_THREADS and PORT mean the same everywhere.
A bad setting stops gunicorn here, before any worker starts.
"""

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path

# Metrics: prometheus_client picks its multiprocess mode when first imported, so the
# shared folder must be in the environment before anything below imports the app.
_METRICS_VAR = "PROMETHEUS_MULTIPROC_DIR"
_own_metrics_dir = not os.environ.get(_METRICS_VAR)
if _own_metrics_dir:
    os.environ[_METRICS_VAR] = tempfile.mkdtemp(prefix="rentals-metrics-")


def _remove_own_metrics_dir() -> None:
    """Remove the metrics folder if this file made it (at exit, and when a bad setting stops the start)."""
    if _own_metrics_dir:
        shutil.rmtree(os.environ[_METRICS_VAR], ignore_errors=True)


from gunicorn import glogging  # noqa: E402
from gunicorn.arbiter import Arbiter  # noqa: E402

from apps.api.app.capacity import Budget  # noqa: E402 (after the metrics folder is set)
from apps.api.app.config import ConfigError, exit_on_config_error, load_settings  # noqa: E402
from apps.api.app.logs import logging_config  # noqa: E402
from apps.api.app.security import reply_headers  # noqa: E402
from apps.api.server.worker import RequestBufferingWorker  # noqa: E402

# A bad setting: its sentence alone and exit status 2 (gunicorn would print a traceback).
with exit_on_config_error(cleanup=_remove_own_metrics_dir):
    _settings = load_settings()
logger = logging.getLogger("gunicorn.error")
WORKER_BOOT_ERROR = Arbiter.WORKER_BOOT_ERROR

# Server socket
#
#   bind - host:port to listen on, from BIND_HOST (127.0.0.1; 0.0.0.0 behind a load
#          balancer or in a container) and PORT (8000).
#   backlog - connections the kernel queues while every thread is busy; 64 to 2048.

bind = f"{_settings.bind_host}:{_settings.port}"
backlog = 2048

#   reuse_port - each worker listens on its own SO_REUSEPORT socket and the kernel spreads
#                new connections evenly over them. With one shared socket, workers race to
#                accept, and long-lived keep-alive clients often all land on one worker,
#                leaving the other worker's core idle (bench/OPTIMIZATIONS.md). The cost:
#                connections still queued on a worker that dies are reset, as on any crash.
reuse_port = True

# Worker processes
#
#   workers - WEB_CONCURRENCY processes, each with its own connection pool; 2 to 4 per
#             core. workers x DB_POOL_MAX_CONNECTIONS (x hosts) must fit the server's
#             max_connections.
#   worker_class - gthread (each worker serves `threads` requests at once), except that the
#                  worker's main loop reads each request in full, with non-blocking reads,
#                  before a thread serves it (apps/api/server/worker.py): a client that sends
#                  its request a byte at a time holds no thread, and one that has not sent a
#                  whole request (head, and a body up to MAX_CONTENT_LENGTH) within
#                  HTTP_REQUEST_READ_TIMEOUT_SECONDS (10 s; 5 to 60) is cut off with a 408.
#                  Requests gunicorn refuses (malformed, over the limit_request_* limits) get
#                  the API's JSON error shape and security headers. No TLS, HTTP/2 or PROXY
#                  protocol in gunicorn with it: those belong to a proxy in front.
#   threads - GUNICORN_THREADS; a thread holds at most one connection, so more threads
#             than DB_POOL_MAX_CONNECTIONS only makes requests wait (refused below).
#   timeout - GUNICORN_TIMEOUT: seconds a worker may stay silent before the master kills
#             it; above DB_REQUEST_BUDGET_MS, a request's whole database time; 30 to 120.
#   graceful_timeout - seconds a worker gets after SIGTERM to finish in-flight requests.
#   keepalive - seconds to hold an idle keep-alive connection; 2 to 5 behind a balancer.
#   max_requests - recycle a worker after this many requests (bounds slow leaks); the
#                  jitter keeps workers from restarting together. 0 disables. A worker
#                  serves thousands of requests a second, and each restart reloads the app
#                  and reopens its pool, so this is high: minutes, not seconds, under load.

workers = _settings.web_concurrency
worker_class = RequestBufferingWorker.configured(
    read_timeout=_settings.http_request_read_timeout_seconds,
    max_body_bytes=_settings.max_content_length,
    reply_headers=reply_headers(_settings),
)
threads = _settings.gunicorn_threads
timeout = _settings.gunicorn_timeout
graceful_timeout = 30
keepalive = 5
max_requests = 1_000_000
max_requests_jitter = 100_000

# Logging
#
#   logconfig_dict - gunicorn's own lines and the app's in one format: LOG_FORMAT json (one
#                    object per line, production) or text.
#   accesslog - off: the app logs each request itself, with its request id, pool wait
#               and user, which gunicorn's access line cannot know.
#   logger_class - gunicorn's logger, except that it never builds access lines: with
#                  logconfig_dict set, gunicorn formats one per request even when
#                  accesslog is off, only for the logging module to drop it.
#   loglevel - LOG_LEVEL: debug, info, warning, error, critical.

logconfig_dict = logging_config(_settings.log_format, _settings.log_level)


class _NoAccessLogLogger(glogging.Logger):
    """gunicorn's logger with the access log switched off for good."""

    @property
    def access_log_enabled(self):
        """Return False: the app writes the request lines."""
        return False

    def access(self, resp, req, environ, request_time):
        """Write nothing."""


logger_class = _NoAccessLogLogger
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
proc_name = "rentals-api"

# Control
#
#   control_socket_disable - gunicorn 27's control socket defaults to one path per user
#                            (~/.gunicorn/gunicorn.ctl), which two servers on one host
#                            would fight over; signals do the same job here.

control_socket_disable = True

# Server hooks
#
#   on_starting - refuse a thread count the pool cannot serve; empty the metrics folder
#                 (values of an earlier run, or of this master's imports).
#   post_worker_init - each worker creates its own pool after the fork (a pool is never
#               shared across processes), once the app is loaded and the worker's own
#               signal handlers are set: until then it has the master's, and a SIGTERM
#               arriving during a long post_fork was lost. Each worker then reads the
#               timeouts the server really applies to its sessions and refuses to boot
#               (which stops gunicorn) when one is missing; the first also checks the
#               connection budget (behind PgBouncer with PGBOUNCER_ADMIN_URL, both sides:
#               PgBouncer's max_client_conn and its pools against max_connections).
#   worker_exit - close the worker's pool, so no backend outlives it.
#   child_exit - forget a dead worker's live gauges (runs in the master).
#   on_exit - remove the metrics folder if this file made it.


def on_starting(server):
    """Refuse to start with more threads per worker than connections per pool; reset metrics."""
    problem = dataclasses.replace(Budget.from_settings(_settings), threads=server.cfg.threads).threads_above_pool()
    if problem:
        with exit_on_config_error(cleanup=_remove_own_metrics_dir):
            raise ConfigError(
                f"{problem}; extra threads would only wait for a connection. "
                "Lower GUNICORN_THREADS or raise DB_POOL_MAX_CONNECTIONS."
            )
    for path in Path(os.environ[_METRICS_VAR]).glob("*.db"):
        path.unlink()


def post_worker_init(worker):
    """Create this worker's pool, now that it runs in its own process with its app loaded."""
    from apps.api.app.models import database

    app = worker.wsgi
    database.open_pool(app)
    try:
        database.check_session_timeouts(app)
    except database.TimeoutsNotApplied as exc:
        # A worker that fails to boot makes the master stop: nothing serves without its timeouts.
        logger.error("refusing to start: %s", exc)
        raise SystemExit(WORKER_BOOT_ERROR) from None
    except database.DatabaseUnavailable as exc:
        logger.warning("could not check the server's session timeouts: %s", exc)
    if worker.age == 1:
        try:
            database.check_capacity(app)
        except database.DatabaseUnavailable as exc:
            logger.warning("could not check max_connections: %s", exc)


def worker_exit(server, worker):
    """Close this worker's pool when the worker stops."""
    from apps.api.app.models import database

    app = getattr(worker, "wsgi", None)
    if app is not None:
        database.close_pool(app)


def child_exit(server, worker):
    """Drop a dead worker's live pool gauges, so totals count only live workers."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder this file created."""
    _remove_own_metrics_dir()
