"""flask-openapi3 internals the OpenAPI side relies on.

- `APIBlueprint.create_view_func` (a static method every route goes through) wraps a view
  in one function that looks up each part of the request it could validate, then whether
  replies are validated, through the app proxy. A view whose only input is its URL gets
  a shorter wrapper here that does the same for it: validate the URL variables with the
  path model, answer a failure with the app's validation_error_callback, call the view.
  This API never validates replies, so that step has nothing to do; every other view
  keeps flask-openapi3's own wrapper. bench/OPTIMIZATIONS.md has what it saves.
- flask-openapi3 asks a query model for its JSON schema on every request it validates;
  `cached_json_schema` builds each model's once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from functools import wraps
from typing import Any

import flask_openapi3
import pydantic
from flask import abort, current_app

from . import require

DISTRIBUTION = "flask-openapi3"
CHECKED = ">=4.3,<4.4"
_VIEW_FUNC_PARAMETERS = (
    "func",
    "header",
    "cookie",
    "path",
    "query",
    "form",
    "body",
    "raw",
    "view_class",
    "view_kwargs",
    "responses",
    "validate_response",
)


class APIBlueprint(flask_openapi3.APIBlueprint):
    """flask-openapi3's blueprint; a view whose only input is its URL gets a shorter wrapper."""

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


@functools.cache
def cached_json_schema(model: type[pydantic.BaseModel], args: tuple, kwargs: tuple) -> dict[str, Any]:
    """Return pydantic's JSON schema of `model` for these arguments, built once (kwargs as sorted items)."""
    return pydantic.BaseModel.model_json_schema.__func__(model, *args, **dict(kwargs))  # type: ignore[attr-defined]


def verify() -> None:
    """Raise IncompatibleVersion unless create_view_func still has the signature overridden above."""
    parameters = tuple(inspect.signature(flask_openapi3.APIBlueprint.create_view_func).parameters)
    require(
        parameters == _VIEW_FUNC_PARAMETERS,
        DISTRIBUTION,
        f"APIBlueprint.create_view_func{_VIEW_FUNC_PARAMETERS} (it has {parameters})",
    )
    require(
        isinstance(inspect.getattr_static(flask_openapi3.APIBlueprint, "create_view_func"), staticmethod),
        DISTRIBUTION,
        "a static APIBlueprint.create_view_func",
    )
