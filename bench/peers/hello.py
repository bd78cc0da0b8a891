"""The framework ceiling: the same route shape and a reply of the same size, no database."""

from __future__ import annotations

from datetime import UTC, datetime

from .common import make_app

_CREATED = datetime(2024, 1, 1, tzinfo=UTC).isoformat()


class NoPool:
    """Nothing to open: this app never touches a database."""

    def open(self) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


def fetch_customer(customer_id: int) -> dict:
    """Return a made-up customer shaped like a real row."""
    return {
        "id": customer_id,
        "full_name": "Hello World",
        "email": f"customer{customer_id}@example.com",
        "phone": "+1 555 0100",
        "notes": None,
        "created_at": _CREATED,
        "updated_at": _CREATED,
    }


app = make_app("hello", NoPool(), fetch_customer)
