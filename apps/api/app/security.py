"""HTTP hardening: security headers on every reply, CORS for configured origins, the client address behind proxies.

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
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import Settings

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("Cache-Control", "no-store"),
)
CORS_METHODS = "GET, POST, PATCH, DELETE"
CORS_REQUEST_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
# Reply headers a browser script may read besides the simple ones.
CORS_EXPOSED_HEADERS = "Idempotent-Replayed, Location, Retry-After, WWW-Authenticate, X-Request-ID"
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


def init_app(app: Flask, settings: Settings) -> None:
    """Answer CORS for the configured origins; trust TRUSTED_PROXIES proxies.

    The security headers are added to every reply by the request middleware
    (middleware.py), with the request id.
    """
    if settings.cors_origins:
        cors = Cors(settings)
        app.before_request(cors.answer_preflight)
        app.after_request(_cors_hook(cors))
    if settings.trusted_proxies:
        # X-Forwarded-For and -Proto as set by that many proxies in front: remote_addr is then
        # the client's address (what the login limits count), not the load balancer's.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)
