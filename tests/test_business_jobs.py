"""The business's jobs on a real database: expire_reservations (also racing an activation),
overdue_reminders and purge_rate_limits, each run as the scheduler runs it."""

from __future__ import annotations

import datetime
import threading

import pytest

from apps.api.app.errors import Conflict
from apps.api.app.jobs import definitions
from apps.api.app.models import rentals
from apps.api.app.models.database import transaction
from tests.helpers import insert_row, wait_until

TODAY = datetime.date.today()


def days(n: int) -> datetime.date:
    """Return today plus n days."""
    return TODAY + datetime.timedelta(days=n)


def status_of(admin_conn, rental_id: int) -> tuple[str, str | None]:
    """Return the rental's status and cancel_reason, read outside the app."""
    with admin_conn.cursor() as cur:
        cur.execute("SELECT status, cancel_reason FROM rentals WHERE id = %s", (rental_id,))
        return cur.fetchone()


@pytest.fixture
def rental_of(make_customer, make_product, make_rental):
    """Insert a rental of a new product: rental_of(start_offset_days, length_days=2, status="reserved")."""
    customer = make_customer()

    def make(start: int, length: int = 2, status: str = "reserved") -> dict:
        return make_rental(customer, make_product(), days(start), days(start + length), status)

    return make


def test_reservations_not_picked_up_within_the_grace_days_are_cancelled(app, admin_conn, rental_of, monkeypatch):
    monkeypatch.setattr(definitions, "BATCH", 2)
    late = [rental_of(-3), rental_of(-2), rental_of(-5, length=10)]
    within_grace = rental_of(-1)  # RESERVATION_GRACE_DAYS=1: may still be picked up today
    future = rental_of(2)
    active = rental_of(-3, status="active")
    with app.app_context():
        assert definitions.expire_reservations() == {"cancelled": 3, "batches": 2}
        assert definitions.expire_reservations() == {"cancelled": 0, "batches": 1}
    assert {status_of(admin_conn, r["id"]) for r in late} == {("cancelled", "not_picked_up")}
    for kept, status in ((within_grace, "reserved"), (future, "reserved"), (active, "active")):
        assert status_of(admin_conn, kept["id"]) == (status, None)


def test_the_grace_days_come_from_the_setting(make_app, admin_conn, rental_of):
    late = rental_of(-2)
    with make_app(RESERVATION_GRACE_DAYS=3).app_context():
        assert definitions.expire_reservations()["cancelled"] == 0
    with make_app(RESERVATION_GRACE_DAYS=0).app_context():
        assert definitions.expire_reservations()["cancelled"] == 1
    assert status_of(admin_conn, late["id"]) == ("cancelled", "not_picked_up")


def test_an_expired_reservation_frees_its_dates(client, staff_headers, app, make_customer, make_product, make_rental):
    customer, product = make_customer(), make_product()
    make_rental(customer, product, days(-3), days(5))
    body = {"customer_id": customer["id"], "product_id": product["id"], "start_date": str(days(1))}
    body["end_date"] = str(days(2))
    assert client.post("/api/rentals", json=body, headers=staff_headers).status_code == 409
    with app.app_context():
        definitions.expire_reservations()
    assert client.post("/api/rentals", json=body, headers=staff_headers).status_code == 201


def test_staff_cancellations_say_so(client, staff_headers, rental_of):
    rental = rental_of(3)
    reply = client.post(f"/api/rentals/{rental['id']}/cancel", headers=staff_headers)
    assert reply.status_code == 200 and reply.json["cancel_reason"] == "by_staff"
    assert client.get(f"/api/rentals/{rental['id']}", headers=staff_headers).json["cancel_reason"] == "by_staff"


def _activate(app, rental_id: int) -> bool:
    with app.app_context():
        try:
            rentals.transition_rental(rental_id, "activate")
        except Conflict:
            return False
        return True


def test_an_activation_waiting_behind_expiry_loses(app, admin_conn, rental_of):
    rental = rental_of(-3)
    expired, activated = threading.Event(), []
    release = threading.Event()

    def expire_and_hold() -> None:
        with app.app_context(), transaction():
            if rentals.expire_reservations(1, 10):
                expired.set()
            release.wait(10)

    expirer = threading.Thread(target=expire_and_hold)
    expirer.start()
    try:
        assert expired.wait(10)
        activator = threading.Thread(target=lambda: activated.append(_activate(app, rental["id"])))
        activator.start()
        # The activation waits for the expiry's row lock, then finds the rental cancelled.
        assert wait_until(lambda: _waits_for_a_lock(admin_conn), timeout=10)
    finally:
        release.set()
        expirer.join()
    activator.join()
    assert activated == [False]
    assert status_of(admin_conn, rental["id"]) == ("cancelled", "not_picked_up")


def test_expiry_skips_a_rental_whose_activation_is_under_way(app, admin_conn, rental_of):
    rental = rental_of(-3)
    with admin_conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("UPDATE rentals SET status = 'active' WHERE id = %s", (rental["id"],))
        with app.app_context():
            assert definitions.expire_reservations()["cancelled"] == 0
        cur.execute("COMMIT")
    assert status_of(admin_conn, rental["id"]) == ("active", None)


def test_of_concurrent_expiry_and_activation_exactly_one_wins(app, admin_conn, rental_of):
    contested = [rental_of(-3) for _ in range(12)]
    activated: dict[int, bool] = {}
    cancelled: list[int] = []
    start = threading.Barrier(len(contested) + 1)

    def activate(rental_id: int) -> None:
        start.wait()
        activated[rental_id] = _activate(app, rental_id)

    def expire() -> None:
        with app.app_context():
            start.wait()
            with transaction():
                cancelled.extend(row["id"] for row in rentals.expire_reservations(1, 100))

    threads = [threading.Thread(target=activate, args=(r["id"],)) for r in contested]
    threads.append(threading.Thread(target=expire))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for rental in contested:
        status, reason = status_of(admin_conn, rental["id"])
        won_activation, won_expiry = activated[rental["id"]], rental["id"] in cancelled
        assert won_activation != won_expiry, (rental["id"], won_activation, won_expiry)
        assert (status, reason) == (("active", None) if won_activation else ("cancelled", "not_picked_up"))


def _waits_for_a_lock(admin_conn) -> bool:
    with admin_conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cur.fetchone()[0] > 0


def test_overdue_rentals_get_one_reminder_per_day(app, admin_conn, rental_of, monkeypatch):
    monkeypatch.setattr(definitions, "BATCH", 2)
    overdue = [rental_of(-5, length=3, status="active") for _ in range(3)]  # due back two days ago
    reminded_yesterday = rental_of(-4, length=2, status="active")
    insert_row(admin_conn, "overdue_reminders", rental_id=reminded_yesterday["id"], day=days(-1))
    due_today = rental_of(-3, length=3, status="active")  # due back today: not late yet
    returned = rental_of(-5, length=3, status="returned")
    with app.app_context():
        assert definitions.overdue_reminders() == {"reminded": 4, "batches": 3}
        assert definitions.overdue_reminders() == {"reminded": 0, "batches": 1}
    with admin_conn.cursor() as cur:
        cur.execute("SELECT rental_id FROM overdue_reminders WHERE day = current_date ORDER BY rental_id")
        today = [row[0] for row in cur.fetchall()]
    assert today == sorted([r["id"] for r in overdue] + [reminded_yesterday["id"]])
    assert due_today["id"] not in today and returned["id"] not in today


def test_the_overdue_selection_names_the_customer_and_the_days_late(app, rental_of):
    late = rental_of(-5, length=3, status="active")
    with app.app_context(), transaction():
        (row,) = rentals.record_overdue_reminders(10)
    assert (row["id"], row["days_overdue"]) == (late["id"], 2)
    assert row["customer_email"] and row["product_name"]


def test_expired_rate_limits_and_idempotency_keys_are_purged(app, admin_conn, staff_user, monkeypatch):
    monkeypatch.setattr(definitions, "BATCH", 2)
    now = datetime.datetime.now(datetime.UTC)
    gone, kept = now - datetime.timedelta(seconds=1), now + datetime.timedelta(hours=1)
    for n in range(5):
        insert_row(admin_conn, "rate_limits", key=f"expired-{n}", hits=1, expires_at=gone)
    insert_row(admin_conn, "rate_limits", key="current", hits=1, expires_at=kept)
    for key, expires in (("old", gone), ("older", gone), ("fresh", kept)):
        insert_row(
            admin_conn,
            "idempotency_keys",
            user_id=staff_user["id"],
            key=key,
            fingerprint=b"x",
            status=201,
            body=b"{}",
            expires_at=expires,
        )
    with app.app_context():
        assert definitions.purge_rate_limits() == {"rate_limits": 5, "idempotency_keys": 2}
    with admin_conn.cursor() as cur:
        cur.execute("SELECT (SELECT array_agg(key) FROM rate_limits), (SELECT array_agg(key) FROM idempotency_keys)")
        assert cur.fetchone() == (["current"], ["fresh"])
