"""Safe retries of POST requests: the Idempotency-Key header.

A client that loses the reply to a POST cannot tell whether the server acted. Sent with
`Idempotency-Key: <a key of its own>` (the convention Stripe and the IETF draft
draft-ietf-httpapi-idempotency-key-header describe), the request's reply is stored with
the key, scoped to the user, for IDEMPOTENCY_TTL_SECONDS:
- a retry with the same key and the same request gets the same status and body, with
  `Idempotent-Replayed: true`, and nothing runs again;
- the same key with another request (method, path or body) gets 422;
- while the first request runs, another with its key gets 409 `request_in_progress`.

The reply is stored in the same transaction as the view's writes (the database helpers
join it), so either both are committed or neither is. Replies of 500 and above (a busy
or unreachable database, a failure) are not stored and their writes are rolled back:
the client retries with the same key. A PostgreSQL advisory lock held until the
transaction ends serialises one key across workers and hosts; nothing outlives the
transaction, so it works through PgBouncer in transaction mode.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Response, current_app, request

from .auth import current_user
from .errors import Conflict, Unprocessable, ValidationError
from .models import idempotency as model
from .models.database import transaction

F = TypeVar("F", bound=Callable[..., Any])

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Printable ASCII without spaces, as the draft's examples and Stripe's keys are.
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# Reply headers that belong to the reply itself and are replayed with it.
_KEPT_HEADERS = ("Content-Type", "Location")


class _NotStored(Exception):
    """The reply is not one to keep: roll back the transaction and answer it as it is."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def idempotent(view: F) -> F:
    """Make a POST view honour Idempotency-Key (see the module's docstring); without the header it runs as is."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not _KEY.match(key):
            raise ValidationError(
                f"{HEADER} must be 1 to 255 printable ASCII characters without spaces",
                code="invalid_idempotency_key",
                details={HEADER: ["1 to 255 printable ASCII characters, no spaces"]},
            )
        return _answer_once(current_user().id, key, lambda: view(*args, **kwargs))

    wrapper.idempotent = True  # type: ignore[attr-defined]  # read by the OpenAPI document
    return wrapper  # type: ignore[return-value]


def _fingerprint() -> bytes:
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.full_path.encode(), request.get_data(cache=True)):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _answer_once(user_id: int, key: str, run: Callable[[], Any]) -> Response:
    fingerprint = _fingerprint()
    try:
        with transaction():
            if not model.try_lock(user_id, key):
                raise Conflict(
                    f"a request with this {HEADER} is still running; retry once it has answered",
                    code="request_in_progress",
                )
            stored = model.find_reply(user_id, key)
            if stored is not None:
                return _replay(stored, fingerprint)
            response = _run(run)
            if response.status_code >= 500:
                raise _NotStored(response)
            headers = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
            ttl = current_app.config["SETTINGS"].idempotency_ttl_seconds
            model.store_reply(user_id, key, fingerprint, response.status_code, response.get_data(), headers, ttl)
            return response
    except _NotStored as not_stored:
        return not_stored.response


def _run(run: Callable[[], Any]) -> Response:
    # The view's error replies are its answer too, stored like any other (a 409 for a
    # product already booked is what a retry must get again); its writes are undone.
    try:
        with transaction():
            return current_app.make_response(run())
    except Exception as exc:  # every error becomes its reply, as Flask's handlers would make it
        return current_app.make_response(current_app.handle_user_exception(exc))


def _replay(stored: dict[str, Any], fingerprint: bytes) -> Response:
    if bytes(stored["fingerprint"]) != fingerprint:
        raise Unprocessable(
            f"this {HEADER} was used with another request; send a new key for a new request",
            code="idempotency_key_reused",
            details={HEADER: ["already used with another method, path or body"]},
        )
    response = Response(bytes(stored["body"]), status=stored["status"], headers=stored["headers"])
    response.headers[REPLAYED_HEADER] = "true"
    return response
