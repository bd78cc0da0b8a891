"""HTTP hardening: security headers, body limits, CORS for configured origins, the client address behind proxies.

Every reply gets the same precomputed headers, appended by the request middleware
(middleware.py) to the list handed to the server: nosniff, no framing, no referrer, a
Content-Security-Policy that lets a JSON reply load nothing, Cache-Control: no-store
(replies carry customers' data and must not sit in shared caches), and
Strict-Transport-Security when HSTS_MAX_AGE is set.

CORS is off unless CORS_ORIGINS names origins: then a request from one of them gets
Access-Control-Allow-Origin with that origin (or `*` when CORS_ORIGINS is `*`, which the
configuration refuses together with credentials), and its preflight is answered before
authentication. Tokens travel in the Authorization header, so browsers need no cookies:
CORS_ALLOW_CREDENTIALS stays false unless a front end needs it.

A body larger than MAX_CONTENT_LENGTH gets 413 whether it announces its length or comes
chunked, and no more than one byte past the limit is read.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import IO

from flask import Flask, Request, Response, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.utils import cached_property

from .config import Settings

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("Cache-Control", "no-store"),
)
CORS_METHODS = "GET, POST, PATCH, DELETE"
CORS_REQUEST_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Consistency-Token, X-Request-ID"
# Reply headers a browser script may read besides the simple ones.
CORS_EXPOSED_HEADERS = "Idempotent-Replayed, Location, Retry-After, WWW-Authenticate, X-Consistency-Token, X-Request-ID"
CORS_MAX_AGE = "600"


def reply_headers(settings: Settings) -> tuple[tuple[str, str], ...]:
    """Return the headers every reply gets under these settings."""
    headers = SECURITY_HEADERS
    if settings.hsts_max_age:
        headers += (("Strict-Transport-Security", f"max-age={settings.hsts_max_age}; includeSubDomains"),)
    return headers


class Cors:
    """Decides and writes the CORS headers for the configured origins."""

    def __init__(self, settings: Settings) -> None:
        self.any_origin = settings.cors_origins == ("*",)
        self.origins = frozenset(settings.cors_origins)
        credentials = (("Access-Control-Allow-Credentials", "true"),) if settings.cors_allow_credentials else ()
        self.reply = (("Access-Control-Expose-Headers", CORS_EXPOSED_HEADERS), *credentials)
        self.preflight = (
            ("Access-Control-Allow-Methods", CORS_METHODS),
            ("Access-Control-Allow-Headers", CORS_REQUEST_HEADERS),
            ("Access-Control-Max-Age", CORS_MAX_AGE),
            *credentials,
        )

    def allowed(self, origin: str | None) -> str | None:
        """Return the Access-Control-Allow-Origin value for a request from `origin`, or None."""
        if origin is None:
            return None
        if self.any_origin:
            return "*"
        return origin if origin in self.origins else None

    def answer_preflight(self) -> Response | None:
        """Answer an allowed origin's preflight with 204 before authentication (a before_request hook)."""
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        if self.allowed(request.headers.get("Origin")) is None:
            return None
        response = Response(status=204)
        response.headers.extend(self.preflight)
        return response


def _cors_hook(cors: Cors) -> Callable[[Response], Response]:
    vary = () if cors.any_origin else (("Vary", "Origin"),)

    def add_cors_headers(response: Response) -> Response:
        headers = response.headers
        headers.extend(vary)
        origin = cors.allowed(request.headers.get("Origin"))
        if origin is not None:
            headers.add("Access-Control-Allow-Origin", origin)
            if response.status_code != 204 or request.method != "OPTIONS":
                headers.extend(cors.reply)
        return response

    return add_cors_headers


class _CappedBody(io.RawIOBase):
    """A request body of unannounced length, read up to `limit` bytes: a byte more is a 413."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self._left = limit

    def readable(self) -> bool:
        """Say yes: a request body is read."""
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Read the next bytes into `buffer`; raise RequestEntityTooLarge once past the limit."""
        if self._left < 0:
            raise RequestEntityTooLarge()
        # Asking for one byte more than is left tells a body that ends at the limit from
        # one that goes on, without reading any further than that byte.
        data = self._stream.read(min(len(buffer), self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise RequestEntityTooLarge()
        buffer[: len(data)] = data
        return len(data)


class BodyLimitedRequest(Request):
    """Flask's request, whose body without Content-Length (chunked) gets 413 past MAX_CONTENT_LENGTH.

    werkzeug reads such a body (when the server sets `wsgi.input_terminated`, as gunicorn
    does) up to max_content_length and hands over what it read without looking for more:
    an oversized body was cut off silently, then refused as broken JSON, or served when
    its first MAX_CONTENT_LENGTH bytes happened to be a whole document. A body that
    announces its length is refused by werkzeug before it is read, as before.
    """

    @cached_property
    def stream(self) -> IO[bytes]:
        """Return the body's stream; one of unannounced length raises 413 a byte past the limit."""
        limit = self.max_content_length
        if (
            limit is not None
            and self.content_length is None
            and "wsgi.input_terminated" in self.environ
            and not self.shallow
        ):
            return _CappedBody(self.environ["wsgi.input"], limit)
        return super().stream


def init_app(app: Flask, settings: Settings) -> None:
    """Limit bodies however they are sent; answer CORS for the configured origins; trust TRUSTED_PROXIES proxies.

    The security headers are added to every reply by the request middleware
    (middleware.py), with the request id.
    """
    app.request_class = BodyLimitedRequest
    if settings.cors_origins:
        cors = Cors(settings)
        app.before_request(cors.answer_preflight)
        app.after_request(_cors_hook(cors))
    if settings.trusted_proxies:
        # X-Forwarded-For and -Proto as set by that many proxies in front: remote_addr is then
        # the client's address (what the login limits count), not the load balancer's.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)
