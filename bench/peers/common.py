"""What every peer shares: the app shell, the customer query and the settings from env vars."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from flask import Flask, abort


class PeerPool(Protocol):
    """A per-process connection strategy, opened after the fork and closed on worker exit."""

    def open(self) -> None: ...

    def close(self) -> None: ...


def database_url() -> str:
    """Return DATABASE_URL, which the harness sets to the same role and database as the API's."""
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        raise RuntimeError("DATABASE_URL is not set; the harness passes the API's database to every peer.")
    return url


def customer_columns() -> list[str]:
    """Return the customers columns the harness found in the schema (BENCH_CUSTOMER_COLUMNS)."""
    raw = os.environ.get("BENCH_CUSTOMER_COLUMNS", "id,full_name,email,phone,notes,created_at,updated_at")
    columns = [name.strip() for name in raw.split(",") if name.strip()]
    if not all(name.isidentifier() for name in columns):
        raise RuntimeError(f"BENCH_CUSTOMER_COLUMNS holds a name that is not an identifier: {raw!r}")
    return columns


def customer_sql(placeholder: str = "%s") -> str:
    """Return the single-row read every peer runs: one customer by primary key."""
    return f"SELECT {', '.join(customer_columns())} FROM customers WHERE id = {placeholder}"


def make_app(name: str, pool: PeerPool, fetch_customer: Callable[[int], dict[str, Any] | None]) -> Flask:
    """Build a peer app whose only route reads one customer with `fetch_customer`."""
    app = Flask(name, static_folder=None)
    app.extensions["bench_pool"] = pool

    @app.get("/api/customers/<int:customer_id>")
    def get_customer(customer_id: int):
        """Return one customer, or 404."""
        return fetch_customer(customer_id) or abort(404)

    return app
