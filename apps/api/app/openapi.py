"""The API's OpenAPI side: flask-openapi3's app options, blueprints, validation errors, /api/openapi.json.

flask-openapi3 (with pydantic v2) was chosen for its per-request cost: it validates only
what a view declares and never re-validates replies; measured on direct WSGI calls it adds
about 6 us to a detail GET, 7 us to a POST and 11 us to a list (spectree 17/38/38 us,
apiflask 16/31/23 us, flask-smorest 14/59/49 us). See docs/API.md.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable
from functools import wraps
from typing import Any

import flask_openapi3
import pydantic
from flask import Blueprint, Flask, Response, abort, current_app, request
from flask_openapi3 import Info, SecurityScheme, Tag

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


class APIBlueprint(flask_openapi3.APIBlueprint):
    """flask-openapi3's blueprint; a view whose only input is its URL gets a shorter wrapper.

    flask-openapi3 wraps every view in one function that looks up each part of the request
    it could validate, then whether replies are validated, through the app proxy; for
    `GET /api/customers/<id>` that wrapper cost ~12 us of a ~208 us request (in-process,
    CPU). A view that declares only a path model (reads and deletes by id) gets a wrapper
    that does the same for it: validate the URL variables with the path model, answer a
    failure with the app's validation_error_callback (our 400), call the view. This API
    never validates replies (app_options sets no validate_response), so that step has
    nothing to do; every other view keeps flask-openapi3's own wrapper.
    """

    @staticmethod
    def create_view_func(
        func: Callable[..., Any],
        header: Any,
        cookie: Any,
        path: Any,
        query: Any,
        form: Any,
        body: Any,
        raw: Any,
        view_class: Any = None,
        view_kwargs: Any = None,
        responses: Any = None,
        validate_response: bool | None = None,
    ) -> Callable[..., Any]:
        """Return the view flask-openapi3 would register, shorter when only the path is validated."""
        path_only = path is not None and not any((header, cookie, query, form, body, raw, view_class))
        if (
            not path_only
            or validate_response
            or inspect.iscoroutinefunction(func)
            or getattr(func, "__delay_validate_request__", False)
        ):
            return flask_openapi3.APIBlueprint.create_view_func(
                func,
                header,
                cookie,
                path,
                query,
                form,
                body,
                raw,
                view_class=view_class,
                view_kwargs=view_kwargs,
                responses=responses,
                validate_response=validate_response,
            )
        return _path_view(func, path)


def _path_view(func: Callable[..., Any], path_model: type[pydantic.BaseModel]) -> Callable[..., Any]:
    validate = path_model.model_validate

    @wraps(func)
    def view_func(**kwargs: Any) -> Any:
        try:
            path = validate(kwargs)
        except pydantic.ValidationError as exc:
            abort(current_app.validation_error_callback(exc))  # type: ignore[attr-defined]
        return func(path=path)

    return view_func


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
                operation["description"] = "Bearer HEALTH_API_TOKEN, or an admin user's token."
                operation["responses"]["401"] = _error_reply("Unauthorized")
                operation["responses"]["403"] = _error_reply("Forbidden")
            if path.startswith("/api/health/db"):
                operation["responses"]["503"] = {"description": "The database cannot be reached"}
            paths.setdefault(path, {})[method.lower()] = operation
    return paths


def _error_reply(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA}}}}


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
        current_app.extensions[EXTENSION] = doc
    return doc
