r"""Logging: one line per request with its id, JSON lines in production, readable ones in dev.

The request line carries time, level, request id (X-Request-ID, or a new one, echoed in
the reply), method, path, status, duration, pool wait and the user id once authenticated.
Headers, bodies and query strings are never logged, so tokens and passwords cannot leak.

No client can forge or break a line: every character that str.isprintable() refuses (C0
and C1 controls, DEL, the line and paragraph separators, format characters such as the
bidirectional overrides) is written as an escape. In text, the request line's method and
path are written as a Python string literal writes them (`\n`, `\x85`, `\u2028`, and `\\`
for a backslash), a space as `\x20`, so that the line splits on spaces; other messages get
their unprintable characters so escaped, and a traceback's lines are indented, so every
line that starts at the margin is a record. In JSON, each line is one object with such
characters as `\u` escapes (orjson escapes only C0), and its fields keep the exact
values; the request line's `message` reads as in text.
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


def _escape(char: str) -> str:
    """Return `char` as a Python string literal writes it."""
    return repr(char)[1:-1]  # '\n', '\x85', '\u2028', '\U000e0001', '\\'


def escape_text(text: str) -> str:
    """Return `text` with each character str.isprintable() refuses written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def escape_field(text: str) -> str:
    """Return `text` as escape_text does, with a backslash as `\\\\` and a space as `\\x20` too.

    So a field of a text line reads back unambiguously and holds no space: a path can
    neither fake the status and duration written after it nor be taken for them.
    """
    if text.isprintable() and " " not in text and "\\" not in text:
        return text
    return "".join(char if char.isprintable() and char not in " \\" else _escape_in_field(char) for char in text)


def _escape_in_field(char: str) -> str:
    """Return `char` as escape_field writes it."""
    return "\\x20" if char == " " else _escape(char)


def _json_escape(char: str) -> str:
    """Return `char` as a JSON string escape."""
    code = ord(char)
    if code > 0xFFFF:  # JSON spells a code point past the BMP as a UTF-16 surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def escape_json(document: str) -> str:
    """Return a JSON document with each unprintable character as a \\u escape: the same document, printable.

    orjson escapes the C0 controls only; DEL, the C1 controls (NEL among them), U+2028 and
    U+2029 went out raw, and some log readers take them for line ends. They can only be
    inside strings, where an escape means the same character.
    """
    if document.isprintable():
        return document
    return "".join(char if char.isprintable() else _json_escape(char) for char in document)


class _JsonFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter, its lines made printable by escape_json."""

    def jsonify_log_record(self, log_data: Any) -> str:
        """Return the record as one printable line of JSON."""
        return escape_json(super().jsonify_log_record(log_data))


class _TextFormatter(logging.Formatter):
    """logging's formatter, one record a line: unprintable characters escaped, tracebacks indented."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Format the record's line with its message's unprintable characters escaped."""
        record.message = escape_text(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        """Return the traceback with each line escaped and indented: no line of it starts a record."""
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        """Return the stack with each line escaped and indented."""
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    """Return `text` with each line escaped and indented by four spaces."""
    return "\n".join("    " + escape_text(line) for line in text.split("\n"))


def json_formatter() -> logging.Formatter:
    """Return the JSON-lines formatter shared by the app and gunicorn (orjson: one line per request is hot)."""
    return _JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})


def text_formatter() -> logging.Formatter:
    """Return the readable-lines formatter shared by the app and gunicorn."""
    return _TextFormatter(TEXT_FORMAT)


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """Return a logging.config dict that sends every logger to stderr in `log_format`."""
    formatter: dict[str, Any] = {"()": f"apps.api.app.logs.{log_format}_formatter"}
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
        # The request id is checked by the middleware, the user id is a number; method and
        # path are the client's.
        method, path, request_id = state.method, state.path, state.request_id
        message = (
            f"{escape_field(method)} {escape_field(path)} {status} {took:.1f}ms "
            f"(pool wait {waited:.1f}ms, request {request_id})"
        )
        if self.json:
            line = orjson.dumps(
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
            if not line.isascii() or b"\x7f" in line:  # else nothing in it can need escape_json
                line = escape_json(line.decode()).encode()
            line += b"\n"
        else:
            line = f"{self.clock.asctime(now)} INFO [{os.getpid()}] {request_logger.name}: {message}\n".encode()
        # stderr closed or full: never fail the request for its log line.
        with contextlib.suppress(OSError):
            os.write(self.fd, line)
