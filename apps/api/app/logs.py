"""Logging: one line per request with its id, JSON lines in production, readable ones in dev.

The request line carries time, level, request id (X-Request-ID, or a new one, echoed in
the reply), method, path, status, duration, pool wait and the user id once authenticated.
Headers, bodies and query strings are never logged, so tokens and passwords cannot leak.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import sys
import time
from typing import Any

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

from .context import RequestState

request_logger = logging.getLogger("apps.api.request")

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def json_formatter() -> logging.Formatter:
    """Return the JSON-lines formatter shared by the app and gunicorn (orjson: one line per request is hot)."""
    return OrjsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """Return a logging.config dict that sends every logger to stderr in `log_format`."""
    formatter: dict[str, Any] = (
        {"()": "apps.api.app.logs.json_formatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": sys.stderr}},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "apps": {"level": level.upper()},
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        },
    }


# No log line of ours names a thread or a multiprocessing process; looking them up costs
# every LogRecord a few microseconds.
logging.logThreads = False
logging.logMultiprocessing = False


def configure_logging(log_format: str, level: str) -> None:
    """Configure logging unless the host (gunicorn, pytest) already did."""
    if logging.getLogger().handlers:
        logging.getLogger("apps").setLevel(level.upper())
        return
    logging.config.dictConfig(logging_config(log_format, level))


class _Clock:
    """Formats times like logging's %(asctime)s, so request lines sort with the others.

    strftime and localtime are not free, and the second-resolution part changes only
    once a second, so it is kept (as one tuple, replaced whole, so threads never see half
    of it) and only the milliseconds are formatted.
    """

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def asctime(self, now: float) -> str:
        """Return `now` as 'YYYY-MM-DD HH:MM:SS,mmm' in local time."""
        second, prefix = self._second
        if second != int(now):
            second = int(now)
            prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = (second, prefix)
        return f"{prefix},{int(now % 1 * 1000):03d}"


class RequestLog:
    """Writes the one line per request straight to stderr, in the configured format.

    The logging module (a LogRecord, handler locks, a formatter that inspects the record)
    cost a request more than the database read it logged (bench/OPTIMIZATIONS.md). This
    writes the same fields, in the same format as every other line, with one os.write per
    line (atomic for a line this size), so nothing is buffered and nothing is lost if the
    worker dies. It honours the apps logger's level.
    """

    def __init__(self, log_format: str) -> None:
        self.json = log_format == "json"
        self.fd = sys.stderr.fileno()
        self.clock = _Clock()

    def __call__(self, state: RequestState, status: int, duration: float) -> None:
        """Write the line of a finished request, if the apps logger's level lets INFO through."""
        if not request_logger.isEnabledFor(logging.INFO):
            return
        now = time.time()
        took, waited = duration * 1000, state.pool_wait * 1000
        method, path, request_id = state.method, state.path, state.request_id
        message = f"{method} {path} {status} {took:.1f}ms (pool wait {waited:.1f}ms, request {request_id})"
        if self.json:
            line = (
                orjson.dumps(
                    {
                        "time": self.clock.asctime(now),
                        "level": "INFO",
                        "logger": request_logger.name,
                        "process": os.getpid(),
                        "message": message,
                        "request_id": request_id,
                        "method": method,
                        "path": path,
                        "status": status,
                        "duration_ms": round(took, 3),
                        "pool_wait_ms": round(waited, 3),
                        "user_id": state.user_id,
                    }
                )
                + b"\n"
            )
        else:
            line = f"{self.clock.asctime(now)} INFO [{os.getpid()}] {request_logger.name}: {message}\n".encode()
        # stderr closed or full: never fail the request for its log line.
        with contextlib.suppress(OSError):
            os.write(self.fd, line)
