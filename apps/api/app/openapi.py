"""The API's OpenAPI side: flask-openapi3's app options, blueprints, validation errors, /api/openapi.json.

flask-openapi3 (with pydantic v2) was chosen for its per-request cost, the lowest of the
validation libraries timed (bench/OPTIMIZATIONS.md and docs/API.md have the figures): it
validates only what a view declares and never re-validates replies.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pydantic
from flask import Blueprint, Flask, Response, current_app, request
from flask_openapi3 import Info, SecurityScheme, Tag

from .compat.flask_openapi3 import APIBlueprint
from .consistency import HEADER
from .errors import error_response
from .schemas import REQUEST_PARTS, ErrorOut

INFO = Info(
    title="Rentals API",
    version="1.0.0",
    description="Staff manage customers, rentable products and rentals, and watch a dashboard. "
    "Log in with POST /api/auth/login and send the token as `Authorization: Bearer <token>`.",
)
SECURITY_SCHEMES = {
    "bearer": SecurityScheme(
        type="http", scheme="bearer", description="a token from POST /api/auth/login, or HEALTH_API_TOKEN for health"
    )
}
BEARER = [{"bearer": []}]
ERROR_RESPONSES = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 503: ErrorOut}
ERROR_SCHEMA = "#/components/schemas/ErrorOut"
# pydantic's words for the commonest errors, in ours.
_MESSAGES = {"missing": "field required", "extra_forbidden": "unknown field"}

EXTENSION = "rentals_openapi"
# <int:rental_id> in a Flask rule is {rental_id} in OpenAPI.
_RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")

bp = Blueprint("openapi", __name__)


def app_options() -> dict[str, Any]:
    """Return the keyword arguments of flask_openapi3.OpenAPI for this API."""
    return {
        "info": INFO,
        "security_schemes": SECURITY_SCHEMES,
        "doc_ui": False,
        "validation_error_status": 400,
        "validation_error_model": ErrorOut,
        "validation_error_callback": validation_error_response,
    }


def _operation_id(*, name: str, path: str, method: str) -> str:
    return name


def api_blueprint(name: str, import_name: str, url_prefix: str, *, secured: bool = True) -> APIBlueprint:
    """Return a blueprint whose views flask-openapi3 validates and documents under tag `name`."""
    return APIBlueprint(
        name,
        import_name,
        url_prefix=url_prefix,
        abp_tags=[Tag(name=name)],
        abp_security=BEARER if secured else [],
        abp_responses=ERROR_RESPONSES,
        operation_id_callback=_operation_id,
    )


def _body_problem() -> tuple[int, str, str] | None:
    """Return (status, code, sentence) when the request body is not a JSON document, else None."""
    if not request.get_data(cache=True):
        return 400, "invalid_json", "the request needs a JSON body"
    if not request.is_json:
        return 415, "unsupported_media_type", "send the body as JSON with Content-Type: application/json"
    if request.get_json(silent=True) is None:
        return 400, "invalid_json", "the body is not valid JSON"
    return None


def validation_error_response(exc: pydantic.ValidationError) -> Response:
    """Turn a failed request validation into our reply: 400 with messages per field (415 for a non-JSON body)."""
    part = REQUEST_PARTS.get(exc.title, "body")
    if part == "body":
        problem = _body_problem()
        if problem is not None:
            status, code, message = problem
            return error_response(status, code, message, {"body": [message]})
    details: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        field = ".".join(str(step) for step in error["loc"]) or part
        message = _MESSAGES.get(error["type"]) or error["msg"].removeprefix("Value error, ")
        details.setdefault(field, []).append(message)
    fields = ", ".join(details)
    return error_response(400, "validation_error", f"the request's {part} is not valid: {fields}", details)


def _undocumented_operations(app: Flask, documented: dict[str, Any]) -> dict[str, Any]:
    """Describe the routes of plain blueprints (health, metrics) from their rules and docstrings."""
    paths: dict[str, Any] = {}
    for rule in app.url_map.iter_rules():
        path = _RULE_VARIABLE.sub(r"{\1}", rule.rule)
        if path in documented or rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        for method in methods:
            operation: dict[str, Any] = {
                "tags": [rule.endpoint.split(".")[0]],
                "summary": (view.__doc__ or rule.endpoint).strip().splitlines()[0],
                "operationId": rule.endpoint.replace(".", "_") + (f"_{method.lower()}" if len(methods) > 1 else ""),
                "responses": {"200": {"description": "OK"}},
            }
            if getattr(view, "health_token_required", False):
                operation["security"] = BEARER
                operation["description"] = (
                    "Bearer HEALTH_API_TOKEN (checked without the database), or an active admin user's token"
                    " (re-checked like every user token: 503 when the database cannot say)."
                )
                operation["responses"]["401"] = _error_reply("Unauthorized")
                operation["responses"]["403"] = _error_reply("Forbidden")
                operation["responses"]["503"] = _error_reply("An admin's token cannot be re-checked: no database")
            if path.startswith("/api/health/db"):
                operation["responses"]["503"] = {"description": "The database cannot be reached"}
            paths.setdefault(path, {})[method.lower()] = operation
    return paths


def _error_reply(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA}}}}


IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A key of the client's own (1 to 255 printable ASCII characters, no spaces) that makes a retry "
    "safe: a retry with the same key and request gets the first reply again, with `Idempotent-Replayed: true`, "
    "for IDEMPOTENCY_TTL_SECONDS; the key is scoped to the user.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}
IDEMPOTENCY_REPLIES = {
    "409": "Conflict, or request_in_progress: a request with this Idempotency-Key is still running",
    "422": "Unprocessable, or idempotency_key_reused: the Idempotency-Key came with another request",
}
REPLAYED_HEADER = {
    "description": "true when this reply is the stored reply to an earlier request with the same Idempotency-Key",
    "schema": {"type": "string", "enum": ["true"]},
}


def _declare_idempotency(app: Flask, paths: dict[str, Any]) -> None:
    """Add the Idempotency-Key header, its 409 and 422, and Idempotent-Replayed to the views that honour it."""
    for rule in app.url_map.iter_rules():
        if not getattr(app.view_functions[rule.endpoint], "idempotent", False):
            continue
        path = _RULE_VARIABLE.sub(r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = paths[path][method.lower()]
            operation.setdefault("parameters", []).append(IDEMPOTENCY_PARAMETER)
            for status, description in IDEMPOTENCY_REPLIES.items():
                operation["responses"].setdefault(status, _error_reply(description))
            for status, reply in operation["responses"].items():
                if status.startswith("2"):
                    reply.setdefault("headers", {})["Idempotent-Replayed"] = REPLAYED_HEADER


CONSISTENCY_PARAMETER = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": f"The {HEADER} of the reply to this client's last write, sent back unchanged: this request's"
    " reads then see that write. A read replica serves them only once it has replayed the write; until then the"
    " primary does. Without it, reads may come from a replica up to DB_REPLICA_MAX_LAG_MS behind. A value that is"
    " not a token gets 400 invalid_consistency_token.",
    "schema": {"type": "string", "pattern": "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$", "example": "16/B374D848"},
}
CONSISTENCY_HEADER = {
    "description": "With read replicas: the primary's WAL position once this request's writes were committed."
    f" Send it back as {HEADER} on the next requests to read what was written (the read-your-writes token).",
    "schema": {"type": "string", "example": "16/B374D848"},
}
_WRITES = ("post", "put", "patch", "delete")


def _declare_consistency(paths: dict[str, Any]) -> None:
    """Add the X-Consistency-Token parameter (and its 400) to every operation, and the reply header to writes."""
    for operations in paths.values():
        for method, operation in operations.items():
            operation.setdefault("parameters", []).append(CONSISTENCY_PARAMETER)
            operation["responses"].setdefault("400", _error_reply("Bad request, or invalid_consistency_token"))
            if method not in _WRITES:
                continue
            for status, reply in operation["responses"].items():
                if status.startswith("2"):
                    reply.setdefault("headers", {})[HEADER] = CONSISTENCY_HEADER


def _declare_body_errors(paths: dict[str, Any]) -> None:
    """Add the replies every operation with a JSON body may give before its view runs: 413 and 415."""
    for operations in paths.values():
        for operation in operations.values():
            if "requestBody" in operation:
                operation["responses"].setdefault("413", _error_reply("The body is larger than MAX_CONTENT_LENGTH"))
                operation["responses"].setdefault("415", _error_reply("The body is not sent as application/json"))


@bp.get("/api/openapi.json")
def openapi_json():
    """Return the OpenAPI 3 document of every endpoint, built from the models that validate them."""
    doc = current_app.extensions.get(EXTENSION)
    if doc is None:
        doc = copy.deepcopy(current_app.api_doc)  # type: ignore[attr-defined]
        doc["paths"].update(_undocumented_operations(current_app, doc["paths"]))
        _declare_body_errors(doc["paths"])
        _declare_idempotency(current_app, doc["paths"])
        _declare_consistency(doc["paths"])
        current_app.extensions[EXTENSION] = doc
    return doc
