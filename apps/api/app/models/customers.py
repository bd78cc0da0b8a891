"""SQL for customers: one named, parameterized statement per need."""

from __future__ import annotations

from typing import Any

import psycopg2.errors

from ..errors import Conflict
from ..pagination import decode_cursor, page
from .database import execute_query, execute_query_one, execute_write
from .statements import like_pattern, update_by_id

COLUMNS = "id, full_name, email, phone, notes, created_at, updated_at"
# The expression of the trigram index customers_search_trgm_idx, repeated exactly.
SEARCH = "(full_name || ' ' || coalesce(email, '') || ' ' || coalesce(phone, ''))"
UPDATABLE = ("full_name", "email", "phone", "notes")


def list_customers(q: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
    """Return a page of customers in id order, those matching `q` in name, email or phone only."""
    after = decode_cursor("customers", cursor, (int,))
    rows = execute_query(
        f"SELECT {COLUMNS} FROM customers"
        f" WHERE (%(pattern)s::text IS NULL OR {SEARCH} ILIKE %(pattern)s)"
        " AND (%(after)s::bigint IS NULL OR id > %(after)s)"
        " ORDER BY id LIMIT %(limit)s",
        {"pattern": like_pattern(q), "after": after[0] if after else None, "limit": limit + 1},
        replica_ok=True,
    )
    return page(rows, limit, "customers", lambda row: (row["id"],))


def get_customer(customer_id: int) -> dict[str, Any] | None:
    """Return one customer, or None."""
    return execute_query_one(f"SELECT {COLUMNS} FROM customers WHERE id = %s", (customer_id,), replica_ok=True)


def _email_taken(email: str | None) -> Conflict:
    return Conflict(
        f"another customer already has email {email}", code="email_taken", details={"email": ["already taken"]}
    )


def create_customer(fields: dict[str, Any]) -> dict[str, Any]:
    """Insert a customer and return it; raise Conflict when its email is taken."""
    try:
        return execute_write(
            f"INSERT INTO customers (full_name, email, phone, notes)"
            f" VALUES (%(full_name)s, %(email)s, %(phone)s, %(notes)s) RETURNING {COLUMNS}",
            fields,
        )
    except psycopg2.errors.UniqueViolation:
        raise _email_taken(fields.get("email")) from None


def update_customer(customer_id: int, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Apply the given fields (others untouched) and return the customer, or None if it does not exist.

    Raises Conflict when the new email is taken.
    """
    try:
        return execute_write(*update_by_id("customers", customer_id, changes, UPDATABLE, COLUMNS))
    except psycopg2.errors.UniqueViolation:
        raise _email_taken(changes.get("email")) from None


def delete_customer(customer_id: int) -> bool:
    """Delete a customer; return False if it does not exist. Raises Conflict if it has rentals."""
    try:
        return execute_write("DELETE FROM customers WHERE id = %s", (customer_id,)) == 1
    except psycopg2.errors.ForeignKeyViolation:
        raise Conflict(
            "the customer has rentals and cannot be deleted", code="customer_has_rentals", details={}
        ) from None
