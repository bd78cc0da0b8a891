"""SQL for the outbox: messages written with the change that causes them, claimed and settled by delivery.

Writing: `notice_sql(kind, source)` is the INSERT ... SELECT that turns rentals (a table or
a CTE of the statement that changed them) into messages to their customers. The booking and
the cancellation put it in their own statement (models/rentals.py), so the message commits
or rolls back with the change in the round trip it already takes; `enqueue_*` run it on the
cursor of a caller's transaction (the jobs). A customer without an email gets no message.

Delivering (notifications.py): `claim` takes due messages with FOR UPDATE SKIP LOCKED and,
in the same committed statement, moves them past a lease and counts the attempt, so no
other host takes them while this one sends, and nothing outlives the statement (PgBouncer
transaction mode is fine). `delivered`, `failed` and `release` settle a claimed message;
each names the attempt it settles, so a host whose lease ran out and was taken over cannot
undo the newer claim.
"""

from __future__ import annotations

from typing import Any

from .database import Cursor, execute_query_one, execute_write

BOOKING_CONFIRMATION = "booking_confirmation"
CANCELLATION_NOTICE = "cancellation_notice"
OVERDUE_REMINDER = "overdue_reminder"
KINDS = (BOOKING_CONFIRMATION, CANCELLATION_NOTICE, OVERDUE_REMINDER)
# The longest error text kept on a row.
ERROR_LENGTH = 500

# The facts a message tells, from a rental `r`, its customer `c` and its product `p`.
_PAYLOAD = (
    "jsonb_build_object('rental_id', r.id, 'customer_name', c.full_name, 'product_name', p.name,"
    " 'product_sku', p.sku, 'start_date', r.start_date, 'end_date', r.end_date, 'total_cents', r.total_cents)"
)
# One overdue reminder per rental per day, however often the job runs.
_DEDUPE = {OVERDUE_REMINDER: "'overdue_reminder:' || r.id || ':' || current_date"}


def notice_sql(kind: str, source: str, condition: str = "TRUE") -> str:
    """Return the INSERT writing a `kind` message for each rental `r` of `source` (table or CTE) matching `condition`.

    All three are constants of the code, never user text. Rows whose customer has no email are
    skipped; a second message with the same dedupe key (an overdue reminder the same day)
    is skipped too.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    dedupe = _DEDUPE.get(kind)
    # Only a keyed message may conflict; ON CONFLICT costs a speculative insertion otherwise.
    on_conflict = " ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING" if dedupe else ""
    return (
        "INSERT INTO outbox (kind, rental_id, recipient, payload, dedupe_key)"
        f" SELECT '{kind}', r.id, c.email, {_PAYLOAD}, {dedupe or 'NULL'}"
        f" FROM {source} r JOIN customers c ON c.id = r.customer_id JOIN products p ON p.id = r.product_id"
        f" WHERE ({condition}) AND c.email IS NOT NULL{on_conflict}"
    )


def _enqueue(cur: Cursor, kind: str, rental: dict[str, Any]) -> int:
    cur.execute(notice_sql(kind, "rentals", "r.id = %(id)s"), {"id": rental["id"]})
    return cur.rowcount


def enqueue_overdue_reminder(cur: Cursor, rental: dict[str, Any]) -> int:
    """Write today's overdue reminder for `rental` (a dict with its `id`) in the caller's transaction.

    Returns 1 when written, 0 when the customer has no email or today's reminder exists.
    """
    return _enqueue(cur, OVERDUE_REMINDER, rental)


def enqueue_overdue_reminders(cur: Cursor, rental_ids: list[int]) -> int:
    """Write today's overdue reminder for each of `rental_ids` in the caller's transaction; return how many."""
    cur.execute(notice_sql(OVERDUE_REMINDER, "rentals", "r.id = ANY(%(ids)s)"), {"ids": list(rental_ids)})
    return cur.rowcount


def enqueue_cancellation_notice(cur: Cursor, rental: dict[str, Any]) -> int:
    """Write a cancellation notice for `rental` (a dict with its `id`) in the caller's transaction; return 1 or 0."""
    return _enqueue(cur, CANCELLATION_NOTICE, rental)


def claim(limit: int, lease_seconds: float, max_attempts: int) -> list[dict[str, Any]]:
    """Claim up to `limit` due messages for `lease_seconds`, counting the attempt; return them, oldest first.

    Committed at once: the lease is a timestamp on the rows, not a lock held open.
    """
    rows = execute_write(
        "WITH due AS ("
        " SELECT id FROM outbox"
        " WHERE delivered_at IS NULL AND parked_at IS NULL AND next_attempt_at <= now() AND attempts < %(max)s"
        " ORDER BY next_attempt_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
        " claimed AS ("
        " UPDATE outbox o SET attempts = o.attempts + 1,"
        "  next_attempt_at = now() + make_interval(secs => %(lease)s)"
        " FROM due WHERE o.id = due.id"
        " RETURNING o.id, o.kind, o.recipient, o.payload, o.created_at, o.attempts)"
        " SELECT coalesce(json_agg(claimed ORDER BY id), '[]') AS rows FROM claimed",
        {"limit": limit, "lease": lease_seconds, "max": max_attempts},
    )
    return rows["rows"]


def park_exhausted(max_attempts: int) -> int:
    """Park messages whose last allowed attempt was claimed and never settled (its host died); return how many."""
    return execute_write(
        "UPDATE outbox SET parked_at = now(),"
        " last_error = coalesce(last_error, 'the last attempt''s lease ran out without an outcome')"
        " WHERE delivered_at IS NULL AND parked_at IS NULL AND next_attempt_at <= now() AND attempts >= %s",
        (max_attempts,),
    )


def delivered(message_id: int, attempt: int) -> None:
    """Record that attempt `attempt` of a message was accepted by the mail server."""
    execute_write(
        "UPDATE outbox SET delivered_at = now(), last_error = NULL"
        " WHERE id = %s AND attempts = %s AND delivered_at IS NULL AND parked_at IS NULL",
        (message_id, attempt),
    )


def failed(message_id: int, attempt: int, error: str, retry_in: float, park: bool) -> None:
    """Record a failed attempt: due again in `retry_in` seconds, or parked (`park`) for people to look at."""
    execute_write(
        "UPDATE outbox SET last_error = %(error)s,"
        " next_attempt_at = now() + make_interval(secs => %(retry)s),"
        " parked_at = CASE WHEN %(park)s THEN now() END"
        " WHERE id = %(id)s AND attempts = %(attempt)s AND delivered_at IS NULL AND parked_at IS NULL",
        {"id": message_id, "attempt": attempt, "error": error[:ERROR_LENGTH], "retry": retry_in, "park": park},
    )


def release(messages: list[dict[str, Any]]) -> None:
    """Give claimed messages back unsent, due at once and their attempt not counted (the lease ran short)."""
    if not messages:
        return
    execute_write(
        "UPDATE outbox o SET attempts = o.attempts - 1, next_attempt_at = now()"
        " FROM unnest(%s::bigint[], %s::int[]) AS m (id, attempt)"
        " WHERE o.id = m.id AND o.attempts = m.attempt AND o.delivered_at IS NULL AND o.parked_at IS NULL",
        ([m["id"] for m in messages], [m["attempts"] for m in messages]),
    )


def backlog(*, timeout: float | None = None) -> dict[str, Any]:
    """Return the undelivered messages: pending (waiting or being sent), parked, and the oldest pending one's age."""
    return execute_query_one(
        "SELECT count(*) FILTER (WHERE parked_at IS NULL) AS pending,"
        " count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,"
        " coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL)), 0)::float"
        "  AS oldest_pending_seconds"
        " FROM outbox WHERE delivered_at IS NULL",
        timeout=timeout,
    )
