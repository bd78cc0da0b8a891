"""Per-request bookkeeping in one WSGI middleware: request id, security headers, metric, log line.

Flask would run these as before/after_request hooks, each reached through context-local
proxies (`request`, `g`) and werkzeug's Headers, plumbing that cost more than the work
itself (bench/OPTIMIZATIONS.md). Here they read the WSGI environ and append to the header
list handed to the server, once.

Each request gets a `RequestState` (context.py) that the code it runs adds to: the
database helpers their pool wait, authentication the user id.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request

from . import consistency, metrics
from .config import Settings
from .context import RequestState, current_request
from .errors import ValidationError
from .logs import RequestLog
from .security import reply_headers

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The metric's method label takes these; anything a client invents is counted as OTHER,
# so made-up methods cannot grow the number of series.
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RequestMiddleware:
    """Wraps the Flask app: every reply gets its request id and the security headers, every
    request one duration observation and one log line (written by RequestLog)."""

    def __init__(self, app: WSGIApp, headers: tuple[tuple[str, str], ...], log: RequestLog) -> None:
        self.app = app
        self.headers = headers
        self.log = log

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Serve one request through the app, then record it."""
        started = time.perf_counter()
        incoming = environ.get("HTTP_X_REQUEST_ID")
        request_id = incoming if incoming and _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        state = RequestState(environ, request_id)
        _read_consistency_token(state, environ)
        token = current_request.set(state)
        status = [500]  # an exception escaping the app is a 500 to the client

        def start_with_headers(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = int(status_line[:3])
            headers.append(("X-Request-ID", request_id))
            if state.wrote_at is not None:
                headers.append((consistency.HEADER, consistency.format_lsn(state.wrote_at)))
            headers.extend(self.headers)
            return start_response(status_line, headers, exc_info)

        # Recorded when the app hands back its body: every reply here is a JSON document
        # built in full before that. A streamed reply would need the recording moved into
        # the body's close().
        try:
            return self.app(environ, start_with_headers)
        finally:
            current_request.reset(token)
            duration = time.perf_counter() - started
            method = state.method if state.method in _METHODS else "OTHER"
            metrics.REQUEST_DURATION_BUFFER.observe(duration, method, state.endpoint, str(status[0]))
            self.log(state, status[0], duration)


def _read_consistency_token(state: RequestState, environ: dict[str, Any]) -> None:
    # The reply to a write gave this token; reads of this request then need a replica that
    # has replayed that far. A malformed one is refused with 400 once Flask runs
    # (_refuse_bad_token), where errors get their JSON shape.
    text = environ.get(consistency.ENVIRON_KEY)
    if text is None:
        return
    try:
        state.read_after = consistency.parse_lsn(text)
    except ValueError as exc:
        state.token_error = str(exc)


def _refuse_bad_token() -> None:
    # Flask runs this before it raises a routing error: a 404 or 405 stays what it is.
    state = current_request.get()
    if state is not None and state.token_error is not None and request.routing_exception is None:
        raise ValidationError(state.token_error, code="invalid_consistency_token")


def _note_endpoint(endpoint: str | None, values: dict[str, Any] | None) -> None:
    # Flask's url_value_preprocessor hook: the one that is handed the endpoint, right
    # after routing, without a trip through the request proxy.
    state = current_request.get()
    if state is not None and endpoint is not None:
        state.endpoint = endpoint


def init_app(app: Flask, settings: Settings) -> None:
    """Wrap the app (outermost, so every reply and error passes through it)."""
    app.url_value_preprocessor(_note_endpoint)
    app.before_request(_refuse_bad_token)
    app.wsgi_app = RequestMiddleware(app.wsgi_app, reply_headers(settings), RequestLog(settings.log_format))
