"""Logging: one line per request with its id, JSON lines in production, readable ones in dev.

The request line carries time, level, request id (X-Request-ID, or a new one, echoed in
the reply), method, path, status, duration, pool wait and the user id once authenticated.
Headers, bodies and query strings are never logged, so tokens and passwords cannot leak.
"""

from __future__ import annotations

import logging
import logging.config
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

from . import metrics

request_logger = logging.getLogger("apps.api.request")

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def json_formatter() -> logging.Formatter:
    """Return the JSON-lines formatter shared by the app and gunicorn."""
    return JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})


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


def configure_logging(log_format: str, level: str) -> None:
    """Configure logging unless the host (gunicorn, pytest) already did."""
    if logging.getLogger().handlers:
        logging.getLogger("apps").setLevel(level.upper())
        return
    logging.config.dictConfig(logging_config(log_format, level))


def _start_request() -> None:
    g.request_started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def _finish_request(response: Response) -> Response:
    started = g.get("request_started")
    if started is None:  # the request failed before our first hook ran
        return response
    duration = time.perf_counter() - started
    endpoint = request.endpoint or "unmatched"
    metrics.REQUEST_DURATION.labels(request.method, endpoint, str(response.status_code)).observe(duration)
    response.headers["X-Request-ID"] = g.request_id
    pool_wait = g.get("pool_wait_seconds", 0.0)
    request_logger.info(
        "%s %s %s %.1fms (pool wait %.1fms, request %s)",
        request.method,
        request.path,
        response.status_code,
        duration * 1000,
        pool_wait * 1000,
        g.request_id,
        extra={
            "request_id": g.request_id,
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(duration * 1000, 3),
            "pool_wait_ms": round(pool_wait * 1000, 3),
            "user_id": g.get("user_id"),
        },
    )
    return response


def init_app(app: Flask) -> None:
    """Give every request an id, a duration metric and one log line."""
    app.before_request(_start_request)
    app.after_request(_finish_request)
