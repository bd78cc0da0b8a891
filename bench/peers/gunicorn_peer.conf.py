"""gunicorn settings for the peer apps: the API's own gunicorn.conf.py, less its hooks.

    gunicorn -c bench/peers/gunicorn_peer.conf.py -w 2 -k gthread --threads 8 -b HOST:PORT bench.peers.hello:app

Every plain server setting of the project's gunicorn.conf.py (backlog, keepalive, timeouts,
max_requests, access log, ...) is copied, so peers and API differ only in the app. The
command line sets workers, worker class, threads and bind, as it does for every app in the
benchmark. The hooks are replaced by ours: each worker opens its peer's pool after the fork
and closes it on exit.
"""

import runpy
from pathlib import Path

from gunicorn.config import KNOWN_SETTINGS

_API_CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"
_SKIPPED = {"bind", "workers", "threads", "worker_class", "proc_name"}
_NAMES = {setting.name for setting in KNOWN_SETTINGS}
# Settings whose value is a class, not a hook: the API's logger never builds the access
# line it would drop, and a peer must not pay for one either.
_CLASS_SETTINGS = {"logger_class"}

for _name, _value in runpy.run_path(str(_API_CONF)).items():
    if _name in _NAMES and _name not in _SKIPPED and (not callable(_value) or _name in _CLASS_SETTINGS):
        globals()[_name] = _value

proc_name = "bench-peer"


def post_fork(server, worker):
    """Open this worker's pool, now that it runs in its own process (an ASGI peer opens its own, in its lifespan)."""
    pool = getattr(worker.app.wsgi(), "extensions", {}).get("bench_pool")
    if pool is not None:
        pool.open()


def worker_exit(server, worker):
    """Close this worker's pool when the worker stops."""
    pool = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("bench_pool")
    if pool is not None:
        pool.close()
