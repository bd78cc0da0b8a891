"""Small helpers shared by the domain blueprints."""

from __future__ import annotations

from typing import NoReturn

from ..errors import NotFound


def not_found(what: str, ident: int) -> NoReturn:
    """Raise NotFound for `what` number `ident` (use as `return row or not_found(...)`)."""
    raise NotFound(f"{what} {ident} does not exist")


def created(row: dict, location: str) -> tuple[dict, int, dict[str, str]]:
    """Return a 201 reply of the new object with its Location."""
    return row, 201, {"Location": location}
