"""SQL for products: one named, parameterized statement per need."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg2.errors

from ..errors import Conflict
from ..pagination import decode_cursor, page
from .database import execute_query, execute_query_one, execute_write
from .statements import like_pattern, update_by_id

COLUMNS = "id, sku, name, category, daily_rate_cents, deposit_cents, active, created_at, updated_at"
# The expression of the trigram index products_search_trgm_idx, repeated exactly.
SEARCH = "(sku || ' ' || name)"
UPDATABLE = ("sku", "name", "category", "daily_rate_cents", "deposit_cents", "active")


def list_products(
    *,
    q: str | None,
    category: str | None,
    active: bool | None,
    available_from: datetime.date | None,
    available_to: datetime.date | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """Return a page of products in id order, filtered; with a range, only active products free all of it.

    "Free" means no reserved or active rental overlaps [available_from, available_to): the
    exclusion constraint's GiST index answers it.
    """
    after = decode_cursor("products", cursor, (int,))
    rows = execute_query(
        f"SELECT {COLUMNS} FROM products p"
        f" WHERE (%(pattern)s::text IS NULL OR {SEARCH} ILIKE %(pattern)s)"
        " AND (%(category)s::text IS NULL OR p.category = %(category)s)"
        " AND (%(active)s::boolean IS NULL OR p.active = %(active)s)"
        " AND (%(free_from)s::date IS NULL OR (p.active AND NOT EXISTS ("
        "   SELECT 1 FROM rentals r WHERE r.product_id = p.id AND r.status IN ('reserved', 'active')"
        "   AND daterange(r.start_date, r.end_date) && daterange(%(free_from)s::date, %(free_to)s::date))))"
        " AND (%(after)s::bigint IS NULL OR p.id > %(after)s)"
        " ORDER BY p.id LIMIT %(limit)s",
        {
            "pattern": like_pattern(q),
            "category": category,
            "active": active,
            "free_from": available_from,
            "free_to": available_to,
            "after": after[0] if after else None,
            "limit": limit + 1,
        },
        replica_ok=True,
    )
    return page(rows, limit, "products", lambda row: (row["id"],))


def get_product(product_id: int) -> dict[str, Any] | None:
    """Return one product, or None."""
    return execute_query_one(f"SELECT {COLUMNS} FROM products WHERE id = %s", (product_id,), replica_ok=True)


def _sku_taken(sku: str | None) -> Conflict:
    return Conflict(f"another product already has SKU {sku}", code="sku_taken", details={"sku": ["already taken"]})


def create_product(fields: dict[str, Any]) -> dict[str, Any]:
    """Insert a product and return it; raise Conflict when its SKU is taken."""
    try:
        return execute_write(
            "INSERT INTO products (sku, name, category, daily_rate_cents, deposit_cents, active)"
            " VALUES (%(sku)s, %(name)s, %(category)s, %(daily_rate_cents)s, %(deposit_cents)s, %(active)s)"
            f" RETURNING {COLUMNS}",
            fields,
        )
    except psycopg2.errors.UniqueViolation:
        raise _sku_taken(fields.get("sku")) from None


def update_product(product_id: int, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Apply the given fields (others untouched) and return the product, or None if it does not exist.

    A new rate applies to rentals booked from now on; booked ones keep theirs. Raises
    Conflict when the new SKU is taken.
    """
    try:
        return execute_write(*update_by_id("products", product_id, changes, UPDATABLE, COLUMNS))
    except psycopg2.errors.UniqueViolation:
        raise _sku_taken(changes.get("sku")) from None


def delete_product(product_id: int) -> bool:
    """Delete a product; return False if it does not exist. Raises Conflict if it has rentals."""
    try:
        return execute_write("DELETE FROM products WHERE id = %s", (product_id,)) == 1
    except psycopg2.errors.ForeignKeyViolation:
        raise Conflict(
            "the product has rentals and cannot be deleted; set active to false instead",
            code="product_has_rentals",
            details={},
        ) from None
