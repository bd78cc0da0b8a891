"""SQL for rentals: booking under the exclusion constraint, the list, and status transitions."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg2.errors

from ..errors import Conflict, NotFound, Unprocessable
from ..pagination import decode_cursor, page
from .database import execute_query, execute_query_one, execute_write

# A rental with its customer's and product's names, from `r` joined in the same statement.
_SELECT = (
    "SELECT r.id, r.customer_id, c.full_name AS customer_name, r.product_id, p.name AS product_name,"
    " p.sku AS product_sku, r.start_date, r.end_date, r.status, r.daily_rate_cents, r.total_cents,"
    " r.created_by, r.created_at, r.updated_at, r.returned_at"
)
_JOIN = " JOIN customers c ON c.id = r.customer_id JOIN products p ON p.id = r.product_id"
# The longest rental in days (rentals_length_idx answers it at once): a rental that
# overlaps a range cannot start more than that many days before the range does.
LONGEST_RENTAL = "(SELECT coalesce(max(end_date - start_date), 0) FROM rentals)"
# action -> (statuses it may start from, status it leads to)
TRANSITIONS = {
    "activate": (("reserved",), "active"),
    "return": (("active",), "returned"),
    "cancel": (("reserved",), "cancelled"),
}


def list_rentals(
    *,
    status: str | None,
    customer_id: int | None,
    product_id: int | None,
    overlap_from: datetime.date | None,
    overlap_to: datetime.date | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """Return a page of rentals, latest start first (then highest id), with names embedded.

    `overlap_from` / `overlap_to` keep rentals whose [start, end) overlaps that range; either
    end may be open. The overlap is also stated as bounds on start_date, so a page scans
    only rentals that started within the longest rental's length of the range.
    """
    after = decode_cursor("rentals", cursor, (datetime.date, int))
    rows = execute_query(
        f"{_SELECT} FROM rentals r{_JOIN}"
        " WHERE (%(status)s::text IS NULL OR r.status = %(status)s)"
        " AND (%(customer_id)s::bigint IS NULL OR r.customer_id = %(customer_id)s)"
        " AND (%(product_id)s::bigint IS NULL OR r.product_id = %(product_id)s)"
        " AND ((%(from)s::date IS NULL AND %(to)s::date IS NULL)"
        "   OR daterange(r.start_date, r.end_date) && daterange(%(from)s::date, %(to)s::date))"
        # The same overlap as bounds on start_date, which the indexes can scan.
        " AND (%(to)s::date IS NULL OR r.start_date < %(to)s)"
        f" AND (%(from)s::date IS NULL OR r.start_date > %(from)s::date - {LONGEST_RENTAL})"
        " AND (%(after_start)s::date IS NULL OR (r.start_date, r.id) < (%(after_start)s::date, %(after_id)s::bigint))"
        " ORDER BY r.start_date DESC, r.id DESC LIMIT %(limit)s",
        {
            "status": status,
            "customer_id": customer_id,
            "product_id": product_id,
            "from": overlap_from,
            "to": overlap_to,
            "after_start": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit + 1,
        },
        replica_ok=True,
    )
    return page(rows, limit, "rentals", lambda row: (row["start_date"], row["id"]))


def get_rental(rental_id: int) -> dict[str, Any] | None:
    """Return one rental with its names, or None."""
    return execute_query_one(f"{_SELECT} FROM rentals r{_JOIN} WHERE r.id = %s", (rental_id,), replica_ok=True)


def create_rental(
    customer_id: int, product_id: int, start_date: datetime.date, end_date: datetime.date, created_by: int
) -> dict[str, Any]:
    """Book an active product for a customer at the product's current rate; return the rental.

    One statement: it locks the product row, so concurrent bookings of one product take
    turns, and the exclusion constraint decides: of overlapping bookings exactly one
    succeeds. Raises Conflict (product_unavailable, naming the rental in the way) and
    Unprocessable (unknown customer or product, inactive product).
    """
    params = {
        "customer_id": customer_id,
        "product_id": product_id,
        "start": start_date,
        "end": end_date,
        "created_by": created_by,
    }
    try:
        # Locking the product row first queues concurrent bookings of one product: without
        # it, two inserts that conflict in the exclusion index wait for each other and one
        # dies of a deadlock (after deadlock_timeout) instead of a clean exclusion violation.
        row = execute_write(
            "WITH product AS ("
            " SELECT id, daily_rate_cents FROM products WHERE id = %(product_id)s AND active FOR NO KEY UPDATE),"
            " booked AS ("
            " INSERT INTO rentals (customer_id, product_id, start_date, end_date, daily_rate_cents, total_cents,"
            "  created_by)"
            " SELECT %(customer_id)s, p.id, %(start)s, %(end)s, p.daily_rate_cents,"
            "  p.daily_rate_cents::bigint * (%(end)s::date - %(start)s::date), %(created_by)s"
            " FROM product p RETURNING *)"
            f" {_SELECT} FROM booked r{_JOIN}",
            params,
        )
    except psycopg2.errors.ExclusionViolation:
        raise _unavailable(product_id, start_date, end_date) from None
    except psycopg2.errors.ForeignKeyViolation as exc:
        if exc.diag.constraint_name == "rentals_customer_id_fkey":
            raise Unprocessable(
                f"customer {customer_id} does not exist",
                code="unknown_customer",
                details={"customer_id": ["no such customer"]},
            ) from None
        raise
    if row is None:
        raise _not_bookable(product_id)
    return row


def _unavailable(product_id: int, start_date: datetime.date, end_date: datetime.date) -> Conflict:
    conflicting = execute_query_one(
        "SELECT id, start_date, end_date, status FROM rentals"
        " WHERE product_id = %s AND status IN ('reserved', 'active')"
        " AND daterange(start_date, end_date) && daterange(%s, %s) ORDER BY start_date LIMIT 1",
        (product_id, start_date, end_date),
    )
    named = f" by rental {conflicting['id']}" if conflicting else ""
    return Conflict(
        f"product {product_id} is already booked{named} for part of {start_date} to {end_date}",
        code="product_unavailable",
        details={"conflicting_rental": conflicting},
    )


def _not_bookable(product_id: int) -> Unprocessable:
    product = execute_query_one("SELECT active FROM products WHERE id = %s", (product_id,))
    if product is None:
        return Unprocessable(
            f"product {product_id} does not exist",
            code="unknown_product",
            details={"product_id": ["no such product"]},
        )
    return Unprocessable(
        f"product {product_id} is inactive and cannot be booked",
        code="product_inactive",
        details={"product_id": ["inactive product"]},
    )


def transition_rental(rental_id: int, action: str) -> dict[str, Any]:
    """Apply a status change (activate, return, cancel) and return the rental.

    Raises NotFound, or Conflict with the current status when the change is not allowed
    from it. Returning stamps returned_at.
    """
    allowed_from, to_status = TRANSITIONS[action]
    row = execute_write(
        "WITH changed AS ("
        " UPDATE rentals SET status = %(to)s, updated_at = now(),"
        "  returned_at = CASE WHEN %(to)s = 'returned' THEN now() ELSE returned_at END"
        " WHERE id = %(id)s AND status = ANY(%(from)s) RETURNING *)"
        f" {_SELECT} FROM changed r{_JOIN}",
        {"id": rental_id, "to": to_status, "from": list(allowed_from)},
    )
    if row is not None:
        return row
    current = execute_query_one("SELECT status FROM rentals WHERE id = %s", (rental_id,))
    if current is None:
        raise NotFound(f"rental {rental_id} does not exist")
    raise Conflict(
        f"cannot {action} a rental that is {current['status']}",
        code="illegal_transition",
        details={"current_status": current["status"], "allowed_from": list(allowed_from)},
    )
