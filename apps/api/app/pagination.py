"""Keyset pagination: opaque cursors and the `{"items", "next_cursor"}` page.

A cursor is the sort key of the last item of a page, tagged with the list it belongs to,
as base64url JSON. The next page asks for rows strictly after that key, so page 1000
costs what page 1 costs and rows inserted meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ValidationError


def encode_cursor(kind: str, key: Sequence[Any]) -> str:
    """Return the opaque cursor for the sort key `key` of list `kind`."""
    values = [value.isoformat() if isinstance(value, datetime.date) else value for value in key]
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(kind: str, cursor: str | None, types: Sequence[type]) -> list[Any] | None:
    """Return the sort key in a cursor of list `kind`, converted to `types`, or None for no cursor.

    Raises ValidationError (field `cursor`) for anything that is not such a cursor.
    """
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(decoded, list) or decoded[0] != kind or len(decoded) != len(types) + 1:
            raise ValueError("not a cursor of this list")
        return [_convert(value, type_) for value, type_ in zip(decoded[1:], types, strict=True)]
    except (ValueError, TypeError, IndexError, UnicodeEncodeError, binascii.Error):
        raise ValidationError(
            "the cursor is not valid",
            details={"cursor": ["pass next_cursor from the previous page of this same list unchanged"]},
        ) from None


# A cursor's ids go to PostgreSQL as bigint: anything outside would fail there, not here.
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


def _convert(value: Any, type_: type) -> Any:
    if type_ is int:
        if type(value) is not int or not _BIGINT_MIN <= value <= _BIGINT_MAX:
            raise TypeError("expected a 64-bit integer")
        return value
    if type_ is datetime.date:
        return datetime.date.fromisoformat(value)
    raise TypeError(f"unsupported cursor type {type_!r}")


def page(rows: list[dict[str, Any]], limit: int, kind: str, key: Callable[[dict[str, Any]], Sequence[Any]]) -> dict:
    """Return `{"items", "next_cursor"}` from up to limit + 1 rows (one more tells a next page exists)."""
    items = rows[:limit]
    next_cursor = encode_cursor(kind, key(items[-1])) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}
