"""Small helpers shared by the domain blueprints."""

from __future__ import annotations

from typing import NoReturn

from werkzeug.routing import IntegerConverter

from ..errors import NotFound


class AsciiIntConverter(IntegerConverter):
    """werkzeug's `int` converter, on ASCII digits only (registered as `int` by create_app)."""

    # werkzeug's `\d+` also matches every other script's digits, and int() reads them:
    # `/api/customers/%D9%A1` (an Arabic-Indic one) was customer 1.
    regex = r"[0-9]+"


def not_found(what: str, ident: int) -> NoReturn:
    """Raise NotFound for `what` number `ident` (use as `return row or not_found(...)`)."""
    raise NotFound(f"{what} {ident} does not exist")


def created(row: dict, location: str) -> tuple[dict, int, dict[str, str]]:
    """Return a 201 reply of the new object with its Location."""
    return row, 201, {"Location": location}
