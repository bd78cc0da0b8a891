"""SQL for rentals: booking under the exclusion constraint, the list, and status transitions."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg2.errors

from ..errors import Conflict, NotFound, Unprocessable
from ..pagination import decode_cursor, page
from . import outbox
from .database import execute_query, execute_query_one, execute_write, fetch_all, transaction

# A rental with its customer's and product's names, from `r` joined in the same statement.
_SELECT = (
    "SELECT r.id, r.customer_id, c.full_name AS customer_name, r.product_id, p.name AS product_name,"
    " p.sku AS product_sku, r.start_date, r.end_date, r.status, r.daily_rate_cents, r.total_cents,"
    " r.created_by, r.created_at, r.updated_at, r.returned_at, r.cancel_reason"
)
_JOIN = " JOIN customers c ON c.id = r.customer_id JOIN products p ON p.id = r.product_id"
# The longest rental in days (rentals_length_idx answers it at once): a rental that
# overlaps a range cannot start more than that many days before the range does.
LONGEST_RENTAL = "(SELECT coalesce(max(end_date - start_date), 0) FROM rentals)"
# Why a rental was cancelled (rentals.cancel_reason): by staff, or by expire_reservations.
CANCELLED_BY_STAFF = "by_staff"
NOT_PICKED_UP = "not_picked_up"
# action -> (statuses it may start from, status it leads to)
TRANSITIONS = {
    "activate": (("reserved",), "active"),
    "return": (("active",), "returned"),
    "cancel": (("reserved",), "cancelled"),
}
# action -> the message its customer gets, written by the same statement as the change.
NOTICES = {"cancel": outbox.CANCELLATION_NOTICE}


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
    succeeds. The same statement writes the booking confirmation to the outbox, so the
    message exists if and only if the booking committed (inside a transaction() block, it
    commits or rolls back with the block). Raises Conflict (product_unavailable, naming the rental in the way) and
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
            " FROM product p RETURNING *),"
            f" notice AS ({outbox.notice_sql(outbox.BOOKING_CONFIRMATION, 'booked')})"
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
    from it. Returning stamps returned_at. Cancelling writes the cancellation notice to
    the outbox in the same statement.
    """
    allowed_from, to_status = TRANSITIONS[action]
    notice = f", notice AS ({outbox.notice_sql(NOTICES[action], 'changed')})" if action in NOTICES else ""
    row = execute_write(
        "WITH changed AS ("
        " UPDATE rentals SET status = %(to)s, updated_at = now(),"
        "  returned_at = CASE WHEN %(to)s = 'returned' THEN now() ELSE returned_at END,"
        "  cancel_reason = CASE WHEN %(to)s = 'cancelled' THEN %(reason)s END"
        f" WHERE id = %(id)s AND status = ANY(%(from)s) RETURNING *){notice}"
        f" {_SELECT} FROM changed r{_JOIN}",
        {"id": rental_id, "to": to_status, "from": list(allowed_from), "reason": CANCELLED_BY_STAFF},
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


def expire_reservations(grace_days: int, batch: int) -> list[dict[str, Any]]:
    """Cancel up to `batch` reserved rentals not activated `grace_days` after their start date; return them.

    A reservation starting on day D may be picked up through D + grace_days; from the day
    after, it is cancelled with reason not_picked_up, which frees its dates, and its customer
    gets a cancellation notice (outbox, same statement). Rows another
    transaction holds (an activation under way) are skipped, and the status is checked
    again under the row lock, so of an activation and this exactly one changes the rental.
    In a transaction of its own, or a savepoint of the caller's transaction() block.
    """
    with transaction() as cur:
        cur.execute(
            "WITH due AS ("
            " SELECT id FROM rentals WHERE status = 'reserved' AND start_date < current_date - %(grace)s"
            " ORDER BY start_date, id LIMIT %(batch)s FOR UPDATE SKIP LOCKED),"
            " changed AS ("
            " UPDATE rentals r SET status = 'cancelled', cancel_reason = %(reason)s, updated_at = now()"
            " FROM due WHERE r.id = due.id AND r.status = 'reserved' RETURNING r.*),"
            f" notice AS ({outbox.notice_sql(outbox.CANCELLATION_NOTICE, 'changed')})"
            f" {_SELECT} FROM changed r{_JOIN}",
            {"grace": grace_days, "batch": batch, "reason": NOT_PICKED_UP},
        )
        return fetch_all(cur)


def record_overdue_reminders(batch: int) -> list[dict[str, Any]]:
    """Record today's reminder for up to `batch` overdue rentals not yet reminded today; return those rentals.

    Overdue: active, and its end date (the day it was due back) is before today. The
    (rental, day) primary key of overdue_reminders makes it one reminder per rental per
    day however often, and on however many hosts, this runs. Call it inside a transaction()
    block with whatever sends the reminder, so that the record and the message commit
    together (it is a savepoint of that block).
    """
    with transaction() as cur:
        cur.execute(
            "WITH due AS ("
            " SELECT r.id FROM rentals r WHERE r.status = 'active' AND r.end_date < current_date"
            " AND NOT EXISTS (SELECT 1 FROM overdue_reminders o WHERE o.rental_id = r.id AND o.day = current_date)"
            " ORDER BY r.id LIMIT %(batch)s),"
            " reminded AS ("
            " INSERT INTO overdue_reminders (rental_id, day) SELECT id, current_date FROM due"
            " ON CONFLICT DO NOTHING RETURNING rental_id)"
            f" {_SELECT}, current_date - r.end_date AS days_overdue, c.email AS customer_email"
            f" FROM reminded o JOIN rentals r ON r.id = o.rental_id{_JOIN} ORDER BY r.id",
            {"batch": batch},
        )
        return fetch_all(cur)
