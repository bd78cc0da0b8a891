"""Log lines nobody can forge or break: the request line's method, and every other record
(messages that quote a request, tracebacks), in both formats. The paths, sent to a real
gunicorn, are in test_raw_requests.py."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from apps.api.app import logs

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[\d+\] \S+: ")
FORGED = "2026-01-01 00:00:00,000 INFO [1] apps.api.request: GET /f 200 1.0ms (pool wait 0.0ms, request forged)"
# Every character Python's str.splitlines() ends a line at, a terminal escape, a bidi override.
BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x1b\x9b\x7f\u202e"


def test_the_request_line_escapes_the_method_too(make_app, capfd):
    # gunicorn refuses such a method; another server might pass it on.
    app = make_app(LOG_FORMAT="text", LOG_LEVEL="info")
    capfd.readouterr()
    method = f"GET\n{FORGED}\u2028x y"
    assert app.test_client().open("/api/health", method=method).status_code == 405
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and RECORD.match(lines[0]) and lines[0].isprintable(), lines
    assert " apps.api.request: GET\\n2026-01-01\\x2000:00:00,000\\x20INFO" in lines[0], lines[0]
    assert "request\\x20forged)\\u2028x\\x20y /api/health 405 " in lines[0], lines[0]


def test_a_request_id_with_a_line_break_after_it_is_replaced_not_logged(make_app, capfd):
    # gunicorn refuses a line feed in a header; another server might pass it on. The id is
    # logged as it came only when it is wholly made of the allowed characters.
    app = make_app(LOG_FORMAT="text", LOG_LEVEL="info")
    capfd.readouterr()
    replies = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/api/health",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "HTTP_X_REQUEST_ID": "trace-1\n",  # `$` matches before a final line feed
    }
    b"".join(app.wsgi_app(environ, lambda status, headers, exc_info=None: replies.append(dict(headers))))
    assert re.fullmatch(r"[0-9a-f]{32}", replies[0]["X-Request-ID"]), replies[0]["X-Request-ID"]
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and RECORD.match(lines[0]) and "trace-1" not in lines[0], lines


def emit(formatter: logging.Formatter, message: str, *args: object, error: BaseException | None = None) -> str:
    """Log one warning (with `error`'s traceback) through `formatter`; return what it wrote."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.Logger("apps.api.test")
    logger.addHandler(handler)
    logger.warning(message, *args, exc_info=(type(error), error, error.__traceback__) if error else None)
    return stream.getvalue()


def raised(message: str) -> BaseException:
    """Return an exception with `message`, raised, so that it has a traceback."""
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


@pytest.mark.parametrize("brk", list(BREAKS), ids=[f"U+{ord(c):04X}" for c in BREAKS])
def test_text_records_stay_one_record_whatever_they_quote(brk):
    # A message that quotes a request (the pool's leak report names its path), and an
    # exception whose text a client chose.
    path = f"/api/x{brk}{FORGED}"
    written = emit(logs.text_formatter(), "possible connection leak: held by GET %s", path, error=raised(path))
    lines = written.splitlines()
    assert RECORD.match(lines[0]) and sum(bool(RECORD.match(line)) for line in lines) == 1, lines
    assert all(line.isprintable() for line in lines), lines
    # The traceback, indented: a line break in the exception's text starts an indented line.
    assert all(line.startswith("    ") for line in lines[1:]), lines
    assert lines[0].endswith("held by GET /api/x" + repr(brk)[1:-1] + FORGED), lines[0]
    assert lines[1] == "    Traceback (most recent call last):", lines
    assert any(line.startswith("    ValueError: /api/x") for line in lines), lines


@pytest.mark.parametrize("brk", list(BREAKS), ids=[f"U+{ord(c):04X}" for c in BREAKS])
def test_json_records_are_one_printable_line_with_the_exact_text(brk):
    path = f"/api/x{brk}{FORGED}"
    written = emit(logs.json_formatter(), "possible connection leak: held by GET %s", path, error=raised(path))
    assert written.endswith("\n") and len(written.splitlines()) == 1 and written[:-1].isprintable(), written
    record = json.loads(written)
    assert record["message"] == f"possible connection leak: held by GET {path}"
    assert record["exc_info"].endswith(f"ValueError: {path}")


def test_json_escapes_characters_past_the_basic_plane_as_surrogate_pairs():
    text = "tag \U000e0001 private \U000f0000 emoji \U0001f600"
    written = emit(logs.json_formatter(), "%s", text)
    assert "\\udb40\\udc01" in written and "\\udb80\\udc00" in written and "\U0001f600" in written, written
    assert json.loads(written)["message"] == text
