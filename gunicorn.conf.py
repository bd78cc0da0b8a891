"""gunicorn settings for the Rentals API.

    gunicorn -c gunicorn.conf.py apps.api.wsgi:app

Values come from the app's own settings (apps/api/app/config.py: env vars, then
.env.<APP_ENV>), so WEB_CONCURRENCY, GUNICORN_THREADS and PORT mean the same everywhere.
A bad setting stops gunicorn here, before any worker starts.
"""

import logging

from apps.api.app.config import load_settings

_settings = load_settings()
logger = logging.getLogger("gunicorn.error")

# Server socket
#
#   bind - host:port to listen on, from BIND_HOST (127.0.0.1; 0.0.0.0 behind a load
#          balancer or in a container) and PORT (8000).
#   backlog - connections the kernel queues while every thread is busy; 64 to 2048.

bind = f"{_settings.bind_host}:{_settings.port}"
backlog = 2048

# Worker processes
#
#   workers - WEB_CONCURRENCY processes, each with its own connection pool; 2 to 4 per
#             core. workers x DB_POOL_MAX_CONNECTIONS (x hosts) must fit the server's
#             max_connections.
#   worker_class - gthread: each worker serves `threads` requests at once.
#   threads - GUNICORN_THREADS; a thread holds at most one connection, so more threads
#             than DB_POOL_MAX_CONNECTIONS only makes requests wait (refused below).
#   timeout - seconds a worker may stay silent before the master kills it; above
#             DB_POOL_TIMEOUT plus the statement timeout; 30 to 120.
#   graceful_timeout - seconds a worker gets after SIGTERM to finish in-flight requests.
#   keepalive - seconds to hold an idle keep-alive connection; 2 to 5 behind a balancer.
#   max_requests - recycle a worker after this many requests (bounds slow leaks); the
#                  jitter keeps workers from restarting together. 0 disables.

workers = _settings.web_concurrency
worker_class = "gthread"
threads = _settings.gunicorn_threads
timeout = 60
graceful_timeout = 30
keepalive = 5
max_requests = 10000
max_requests_jitter = 1000

# Logging
#
#   accesslog / errorlog - "-" is stdout / stderr, where a process manager collects them.
#   loglevel - LOG_LEVEL: debug, info, warning, error, critical.

accesslog = "-"
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
#   on_starting - refuse a thread count the pool cannot serve.
#   post_fork - each worker creates its own pool after the fork (a pool is never shared
#               across processes); the first worker also checks the connection budget.
#   worker_exit - close the worker's pool, so no backend outlives it.


def on_starting(server):
    """Refuse to start with more threads per worker than connections per pool."""
    if server.cfg.threads > _settings.db_pool_max_connections:
        raise SystemExit(
            f"GUNICORN_THREADS ({server.cfg.threads}) is above DB_POOL_MAX_CONNECTIONS "
            f"({_settings.db_pool_max_connections}); extra threads would only wait for a connection. "
            "Lower GUNICORN_THREADS or raise DB_POOL_MAX_CONNECTIONS."
        )


def post_fork(server, worker):
    """Create this worker's pool, now that it runs in its own process."""
    from apps.api.app.models import database

    app = worker.app.wsgi()
    database.open_pool(app)
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
