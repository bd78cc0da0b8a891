"""The jobs the business needs. Declare a job here with @job (see registry.py).

Each works in batches of BATCH rows, one transaction per batch, and checks its lease
between batches, so a long backlog never holds locks for long and a run never goes on
past its timeout. Each is idempotent: running a slot again finds nothing left to do.
"""

from __future__ import annotations

from flask import current_app

from .. import notifications, ratelimit
from ..models import dashboard, idempotency, outbox, rentals
from ..models.database import transaction
from .registry import check_lease, job

# Rows per statement: small enough that a batch's locks and WAL stay small.
BATCH = 500


def _settings():
    return current_app.config["SETTINGS"]


@job("expire_reservations", every=300, timeout=120)
def expire_reservations() -> dict[str, int]:
    """Cancel (reason not_picked_up) reserved rentals not activated RESERVATION_GRACE_DAYS after their start."""
    grace = _settings().reservation_grace_days
    cancelled = batches = 0
    while True:
        check_lease()
        with transaction():
            expired = rentals.expire_reservations(grace, BATCH)
        cancelled += len(expired)
        batches += 1
        if len(expired) < BATCH:
            return {"cancelled": cancelled, "batches": batches}


@job("overdue_reminders", every=3600, timeout=300)
def overdue_reminders() -> dict[str, int]:
    """Send one reminder per overdue rental (active, past its end date) per day, through the outbox."""
    reminded = batches = 0
    while True:
        check_lease()
        with transaction() as cur:
            due = rentals.record_overdue_reminders(BATCH)
            outbox.enqueue_overdue_reminders(cur, [rental["id"] for rental in due])
        reminded += len(due)
        batches += 1
        if len(due) < BATCH:
            return {"reminded": reminded, "batches": batches}


@job("purge_rate_limits", every=3600, timeout=120)
def purge_rate_limits() -> dict[str, int]:
    """Delete expired login-limit windows and expired idempotency keys."""
    purged = {"rate_limits": 0, "idempotency_keys": 0}
    for table, purge in (("rate_limits", ratelimit.purge_expired), ("idempotency_keys", idempotency.purge_expired)):
        while True:
            check_lease()
            deleted = purge(BATCH)
            purged[table] += deleted
            if deleted < BATCH:
                break
    return purged


@job("deliver_outbox", every=15, timeout=300)
def deliver_outbox() -> dict[str, int]:
    """Send the outbox's due messages by SMTP (notifications.py): retried with backoff, parked at the last."""
    return notifications.deliver_outbox()


@job("refresh_dashboard", every="DASHBOARD_REFRESH_SECONDS", timeout=120)
def refresh_dashboard() -> dict[str, float | bool]:
    """Recompute the dashboard's snapshot, once for every worker and host (models/dashboard.py)."""
    return dashboard.refresh_snapshot()
