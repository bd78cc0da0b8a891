"""Bearer authentication: password hashes, signed expiring tokens, and the decorators that guard views.

A user token is `{"sub": user_id, "role": role}` signed with SECRET_KEY and timestamped
(itsdangerous); its signature and age (TOKEN_TTL_SECONDS) are checked without the
database, so the health endpoints keep answering while the database is down.

Every endpoint that accepts a user token (the domain, /api/auth/me, the health endpoints
and /metrics) also asks whether the user is still active, and their current role, at most
once every USER_RECHECK_SECONDS per worker process (the answer is cached): a user
deactivated or demoted at 12:00 is refused everywhere by 12:00 + USER_RECHECK_SECONDS,
long before the token expires. Only HEALTH_API_TOKEN is accepted without the database.
"""

from __future__ import annotations

import datetime
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, current_app, g, request
from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer
from werkzeug.security import check_password_hash, generate_password_hash

from .context import request_state
from .errors import Forbidden, Unauthorized
from .models import users

F = TypeVar("F", bound=Callable)

EXTENSION = "rentals_auth"
TOKEN_SALT = "rentals-api.user-token"  # noqa: S105  # a namespace for signatures, not a secret
# How long a worker trusts its cached answer to "is this user active, with which role".
USER_RECHECK_SECONDS = 30.0
# Verified tokens kept per worker, so a token's signature is checked once, not per request;
# cleared when full.
TOKEN_CACHE_SIZE = 4096
ROLE_RANK = {"staff": 1, "admin": 2}


@dataclass(frozen=True)
class CurrentUser:
    """The authenticated user of a request."""

    id: int
    role: str

    @property
    def is_admin(self) -> bool:
        """Return True for an admin."""
        return self.role == "admin"


class AuthState:
    """One app's token serializer and its per-process caches."""

    def __init__(self, secret_key: str, token_ttl: int) -> None:
        self.serializer = token_serializer(secret_key)
        self.token_ttl = token_ttl
        self.user_recheck_seconds = USER_RECHECK_SECONDS
        # token -> (expires at, epoch seconds; user id; role claim)
        self.tokens: dict[str, tuple[float, int, str]] = {}
        # user id -> (checked at, monotonic seconds; active; role)
        self.users: dict[int, tuple[float, bool, str | None]] = {}
        self.dummy_hash_lock = threading.Lock()
        self.dummy_hash: str | None = None


def token_serializer(secret_key: str, **kwargs: Any) -> URLSafeTimedSerializer:
    """Return the serializer that signs and checks user tokens (kwargs: itsdangerous options)."""
    return URLSafeTimedSerializer(secret_key, salt=TOKEN_SALT, **kwargs)


def init_app(app: Flask) -> None:
    """Attach the token serializer and the caches to the app."""
    settings = app.config["SETTINGS"]
    app.extensions[EXTENSION] = AuthState(settings.secret_key, settings.token_ttl_seconds)


def state(app: Flask | None = None) -> AuthState:
    """Return the app's auth state (the current app's by default)."""
    return (app or current_app).extensions[EXTENSION]


# -- passwords ----------------------------------------------------------------------


def hash_password(password: str) -> str:
    """Return werkzeug's scrypt hash of the password (salted, about 70 ms of CPU)."""
    return generate_password_hash(password, method="scrypt")


def check_password(password_hash: str, password: str) -> bool:
    """Return True when the password matches the hash."""
    return check_password_hash(password_hash, password)


def authenticate_credentials(email: str, password: str) -> dict[str, Any]:
    """Return the user (without its hash) whose email and password these are.

    Raises Unauthorized when either is wrong (the same reply and about the same time
    whether or not the email exists) and Forbidden when the account is deactivated.
    """
    user = users.get_user_for_login(email)
    if user is None:
        check_password(_dummy_hash(), password)
        raise Unauthorized("the email or the password is wrong", code="invalid_credentials")
    if not check_password(user.pop("password_hash"), password):
        raise Unauthorized("the email or the password is wrong", code="invalid_credentials")
    if not user["active"]:
        raise Forbidden("this account is deactivated; ask an admin", code="account_disabled")
    return user


def _dummy_hash() -> str:
    auth = state()
    with auth.dummy_hash_lock:
        if auth.dummy_hash is None:
            auth.dummy_hash = hash_password("not-a-password")
        return auth.dummy_hash


# -- tokens -------------------------------------------------------------------------


def issue_token(user_id: int, role: str) -> tuple[str, datetime.datetime]:
    """Return a signed token for the user and the moment it expires (UTC)."""
    auth = state()
    issued = int(time.time())
    token = auth.serializer.dumps({"sub": user_id, "role": role})
    return token, datetime.datetime.fromtimestamp(issued + auth.token_ttl, datetime.UTC)


def verify_token(token: str) -> tuple[int, str]:
    """Return (user id, role claim) of a token signed by this app and not expired; no database.

    Raises Unauthorized with code token_expired or invalid_token.
    """
    auth = state()
    cached = auth.tokens.get(token)
    if cached is not None and time.time() <= cached[0]:
        return cached[1], cached[2]
    try:
        claims, signed_at = auth.serializer.loads(token, max_age=auth.token_ttl, return_timestamp=True)
    except SignatureExpired:
        raise Unauthorized("the token has expired; log in again", code="token_expired") from None
    except BadData:
        raise Unauthorized("the bearer token is not valid", code="invalid_token") from None
    user_id, role = _claims(claims)
    if len(auth.tokens) >= TOKEN_CACHE_SIZE:
        auth.tokens.clear()
    auth.tokens[token] = (signed_at.timestamp() + auth.token_ttl, user_id, role)
    return user_id, role


def _claims(claims: Any) -> tuple[int, str]:
    if not isinstance(claims, dict):
        raise Unauthorized("the bearer token is not valid", code="invalid_token")
    user_id, role = claims.get("sub"), claims.get("role")
    if type(user_id) is not int or role not in ROLE_RANK:
        raise Unauthorized("the bearer token is not valid", code="invalid_token")
    return user_id, role


def bearer_token() -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# -- users --------------------------------------------------------------------------


def _user_access(user_id: int) -> tuple[bool, str | None]:
    """Return (active, role) of a user, from this worker's cache when recent enough."""
    auth = state()
    now = time.monotonic()
    cached = auth.users.get(user_id)
    if cached is not None and now - cached[0] < auth.user_recheck_seconds:
        return cached[1], cached[2]
    row = users.get_user_access(user_id)
    active, role = (row["active"], row["role"]) if row else (False, None)
    auth.users[user_id] = (now, active, role)
    return active, role


def forget_user(user_id: int) -> None:
    """Drop this worker's cached answer for a user, so its next request is checked again."""
    state().users.pop(user_id, None)


def current_user() -> CurrentUser:
    """Return the request's user, authenticating it on first call.

    Raises Unauthorized (no, bad or expired token; user deactivated or deleted).
    """
    user = g.get("current_user")
    if user is not None:
        return user
    token = bearer_token()
    if token is None:
        raise Unauthorized("send Authorization: Bearer <token>; get a token from POST /api/auth/login")
    user_id, _ = verify_token(token)
    active, role = _user_access(user_id)
    if not active or role is None:
        raise Unauthorized("this account is deactivated or no longer exists", code="account_disabled")
    user = g.current_user = CurrentUser(user_id, role)
    running = request_state()
    if running is not None:
        running.user_id = user_id  # for the request line
    return user


def authenticate_request() -> None:
    """Authenticate a staff or admin user before any view of a blueprint runs (before_request)."""
    current_user()


def _require_role(role: str) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args, **kwargs):
            user = current_user()
            if ROLE_RANK[user.role] < ROLE_RANK[role]:
                raise Forbidden(f"this needs an {role} account", code="forbidden_role")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def require_staff(view: F) -> F:
    """Let the view run only for an active staff or admin user; 401 otherwise."""
    return _require_role("staff")(view)


def require_admin(view: F) -> F:
    """Let the view run only for an active admin; 401 without a valid token, 403 for staff."""
    return _require_role("admin")(view)


# -- health -------------------------------------------------------------------------


def is_health_token(token: str) -> bool:
    """Return True when the token is HEALTH_API_TOKEN, compared in constant time."""
    expected = current_app.config["SETTINGS"].health_api_token
    return hmac.compare_digest(token.encode(), expected.encode())


def require_health_token(view: F) -> F:
    """Let the view run for HEALTH_API_TOKEN or an active admin's token; 401 or 403 otherwise.

    HEALTH_API_TOKEN needs no database, so health checks keep answering while it is down.
    An admin's token passes the same re-check as on the domain endpoints: while the
    database is down, this worker's answer for the user stands until it is
    USER_RECHECK_SECONDS old, and after that the request is 503 with Retry-After (the
    user cannot be checked), never 500.
    """

    @wraps(view)
    def wrapper(*args, **kwargs):
        token = bearer_token()
        if token is None:
            raise Unauthorized("send Authorization: Bearer <HEALTH_API_TOKEN or an admin's token>")
        if not is_health_token(token) and not current_user().is_admin:
            raise Forbidden("the health endpoints need HEALTH_API_TOKEN or an admin's token", code="forbidden_role")
        return view(*args, **kwargs)

    wrapper.health_token_required = True  # type: ignore[attr-defined]  # read by the OpenAPI document
    return wrapper  # type: ignore[return-value]
