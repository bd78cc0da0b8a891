"""Notifications through the outbox: written with the change, delivered to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import datetime
import threading
import time

import pytest

from apps.api.app import notifications
from apps.api.app.models import outbox
from apps.api.app.models import rentals as rentals_model
from apps.api.app.models.database import transaction
from tests.helpers import bearer, metric_samples, wait_until
from tests.support.smtp import SmtpServer, self_signed

pytestmark = pytest.mark.both_routes


def outbox_rows(admin_conn) -> list[dict]:
    with admin_conn.cursor() as cur:
        cur.execute("SELECT * FROM outbox ORDER BY id")
        names = [column.name for column in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def book(client, headers, customer, product, start: datetime.date, days: int = 3):
    body = {
        "customer_id": customer["id"],
        "product_id": product["id"],
        "start_date": start.isoformat(),
        "end_date": (start + datetime.timedelta(days=days)).isoformat(),
    }
    reply = client.post("/api/rentals", json=body, headers=headers)
    assert reply.status_code == 201, reply.json
    return reply.json


def deliver(app) -> dict[str, int]:
    with app.app_context():
        return notifications.deliver_outbox()


@pytest.fixture
def mail_app(make_app, smtp_server):
    """The app sending through the test's SMTP server, with retries a tenth of a second apart."""
    return make_app(SMTP_URL=smtp_server.url, OUTBOX_RETRY_SECONDS=0.1, SMTP_TIMEOUT_SECONDS=2)


def test_a_committed_booking_sends_one_confirmation(mail_app, smtp_server, make_user, make_customer, make_product):
    client, headers = mail_app.test_client(), bearer(mail_app, make_user(role="staff"))
    customer = make_customer(full_name="Ada Lovelace", email="ada@example.com")
    product = make_product(name="Cordless drill", sku="DRL-1", daily_rate_cents=1250)
    rental = book(client, headers, customer, product, datetime.date(2031, 5, 4), days=3)

    assert deliver(mail_app) == {"delivered": 1, "failed": 0, "parked": 0, "given_back": 0}
    assert deliver(mail_app)["delivered"] == 0, "a delivered message was sent again"
    [(recipients, message)] = smtp_server.received
    assert recipients == ["ada@example.com"]
    assert message["To"] == "ada@example.com"
    assert message["From"] == "Rentals <rentals@localhost>"
    assert message["Subject"] == "Booking confirmed: Cordless drill from 2031-05-04 to 2031-05-07"
    body = message.get_content()
    assert "Hello Ada Lovelace," in body
    assert "Cordless drill (DRL-1) from 2031-05-04 to 2031-05-07 is confirmed" in body
    assert "Total: 37.50" in body
    assert f"Rental number: {rental['id']}" in body
    assert message["Message-ID"].startswith("<outbox.") and message["Message-ID"].endswith("@localhost>")


def test_a_rolled_back_booking_sends_nothing(mail_app, smtp_server, make_user, make_customer, make_product, admin_conn):
    user, customer, product = make_user(role="staff"), make_customer(), make_product()
    with mail_app.app_context(), pytest.raises(RuntimeError, match="changed my mind"), transaction():
        rentals_model.create_rental(
            customer["id"], product["id"], datetime.date(2031, 1, 1), datetime.date(2031, 1, 2), user["id"]
        )
        assert len(outbox_rows(admin_conn)) == 0, "the message must not be visible before the commit"
        raise RuntimeError("changed my mind")
    assert outbox_rows(admin_conn) == []
    assert deliver(mail_app)["delivered"] == 0
    assert smtp_server.received == []


def test_cancelling_sends_a_notice_and_a_customer_without_email_gets_nothing(
    mail_app, smtp_server, make_user, make_customer, make_product, admin_conn
):
    client, headers = mail_app.test_client(), bearer(mail_app, make_user(role="staff"))
    product = make_product(name="Ladder")
    rental = book(client, headers, make_customer(email="bo@example.com"), product, datetime.date(2031, 2, 1))
    book(client, headers, make_customer(email=None), product, datetime.date(2031, 3, 1))
    assert client.post(f"/api/rentals/{rental['id']}/cancel", headers=headers).status_code == 200
    assert [row["kind"] for row in outbox_rows(admin_conn)] == ["booking_confirmation", "cancellation_notice"]
    assert deliver(mail_app)["delivered"] == 2
    assert [m["Subject"] for m in smtp_server.messages()] == [
        "Booking confirmed: Ladder from 2031-02-01 to 2031-02-04",
        "Booking cancelled: Ladder from 2031-02-01 to 2031-02-04",
    ]


def test_an_overdue_reminder_is_written_once_a_day(mail_app, make_customer, make_product, make_rental, admin_conn):
    today = datetime.date.today()
    rental = make_rental(make_customer(), make_product(), today - datetime.timedelta(days=5), today, status="active")
    with mail_app.app_context():
        with transaction() as cur:
            assert outbox.enqueue_overdue_reminder(cur, rental) == 1
        with transaction() as cur:
            assert outbox.enqueue_overdue_reminder(cur, rental) == 0
    [row] = outbox_rows(admin_conn)
    assert row["kind"] == "overdue_reminder" and row["rental_id"] == rental["id"]


def test_smtp_down_for_a_while_loses_nothing_and_sends_nothing_twice(
    mail_app, smtp_server, make_user, make_customer, make_product, admin_conn
):
    client, headers = mail_app.test_client(), bearer(mail_app, make_user(role="staff"))
    product = make_product()
    for day in range(1, 6):
        book(client, headers, make_customer(), product, datetime.date(2031, 4, day * 4), days=2)
    smtp_server.stop()
    assert deliver(mail_app)["failed"] == 5
    rows = outbox_rows(admin_conn)
    assert all(
        r["attempts"] == 1 and r["delivered_at"] is None and "Connection refused" in r["last_error"] for r in rows
    )
    assert deliver(mail_app)["failed"] == 0, "a message was retried before its backoff"
    time.sleep(0.15)
    assert deliver(mail_app)["failed"] == 5  # the second attempt, still down

    smtp_server.start()
    delivered = []
    wait_until(lambda: delivered.append(deliver(mail_app)["delivered"]) or sum(delivered) >= 5, timeout=5)
    assert sum(delivered) == 5
    ids = [m["Message-ID"] for m in smtp_server.messages()]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert all(r["delivered_at"] is not None and r["attempts"] == 3 for r in outbox_rows(admin_conn))


def test_a_message_failing_every_attempt_is_parked(
    make_app, smtp_server, make_user, make_customer, make_product, admin_conn
):
    app = make_app(SMTP_URL=smtp_server.url, OUTBOX_RETRY_SECONDS=0.05, OUTBOX_MAX_ATTEMPTS=3)
    client, headers = app.test_client(), bearer(app, make_user(role="staff"))
    smtp_server.refuse.add("nobody@example.com")
    product = make_product()
    book(client, headers, make_customer(email="nobody@example.com"), product, datetime.date(2031, 6, 1))
    book(client, headers, make_customer(email="somebody@example.com"), product, datetime.date(2031, 7, 1))
    outcomes = [deliver(app)]
    for _ in range(2):
        time.sleep(0.3)
        outcomes.append(deliver(app))
    assert [(o["delivered"], o["failed"], o["parked"]) for o in outcomes] == [(1, 1, 0), (0, 1, 0), (0, 0, 1)]
    parked = next(r for r in outbox_rows(admin_conn) if r["recipient"] == "nobody@example.com")
    assert parked["attempts"] == 3 and parked["parked_at"] is not None and "451" in parked["last_error"]
    time.sleep(0.3)
    assert deliver(app) == {"delivered": 0, "failed": 0, "parked": 0, "given_back": 0}
    with app.app_context():
        assert outbox.backlog()["parked"] == 1 and outbox.backlog()["pending"] == 0
    assert [r for r, _ in smtp_server.received] == [["somebody@example.com"]]


def test_a_claim_is_exclusive_until_its_lease_runs_out(mail_app, make_user, make_customer, make_product):
    client, headers = mail_app.test_client(), bearer(mail_app, make_user(role="staff"))
    book(client, headers, make_customer(), make_product(), datetime.date(2031, 8, 1))
    with mail_app.app_context():
        [claimed] = outbox.claim(10, lease_seconds=0.5, max_attempts=5)  # then the host "dies"
        assert outbox.claim(10, lease_seconds=0.5, max_attempts=5) == []
        time.sleep(0.6)
        [again] = outbox.claim(10, lease_seconds=0.5, max_attempts=5)
    assert again["id"] == claimed["id"] and again["attempts"] == 2
    with mail_app.app_context():
        outbox.release([again])  # given back unsent: due at once, the attempt not counted
        [back] = outbox.claim(10, lease_seconds=0.5, max_attempts=5)
    assert back["id"] == claimed["id"] and back["attempts"] == 2


@pytest.mark.slow
def test_concurrent_deliveries_send_each_message_once(mail_app, smtp_server, make_customer, make_product, admin_conn):
    product = make_product()
    with mail_app.app_context(), transaction() as cur:
        for n in range(60):
            customer = make_customer()
            cur.execute(
                "INSERT INTO rentals (customer_id, product_id, start_date, end_date, daily_rate_cents, total_cents)"
                " VALUES (%s, %s, %s, %s, 100, 100) RETURNING id",
                (
                    customer["id"],
                    product["id"],
                    datetime.date(2032, 1, 1) + datetime.timedelta(days=n),
                    datetime.date(2032, 1, 2) + datetime.timedelta(days=n),
                ),
            )
            outbox.enqueue_cancellation_notice(cur, {"id": cur.fetchone()[0]})
    summaries, errors = [], []

    def run() -> None:
        try:
            summaries.append(deliver(mail_app))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(s["delivered"] for s in summaries) == 60
    ids = [m["Message-ID"] for m in smtp_server.messages()]
    assert len(ids) == 60 and len(set(ids)) == 60


def test_without_smtp_url_messages_are_logged_and_marked_delivered(
    app, make_user, make_customer, make_product, admin_conn, caplog
):
    client, headers = app.test_client(), bearer(app, make_user(role="staff"))
    book(client, headers, make_customer(email="dev@example.com"), make_product(), datetime.date(2031, 9, 1))
    with caplog.at_level("INFO", logger="apps.api.app.notifications"):
        assert deliver(app)["delivered"] == 1
    assert "not sent, only logged" in caplog.text and "dev@example.com" in caplog.text
    assert outbox_rows(admin_conn)[0]["delivered_at"] is not None


def test_the_backlog_is_in_the_metrics(app, make_user, make_customer, make_product, health_headers):
    client, headers = app.test_client(), bearer(app, make_user(role="staff"))
    book(client, headers, make_customer(), make_product(), datetime.date(2031, 10, 1))
    exposition = client.get("/metrics", headers=health_headers).get_data(as_text=True)
    assert metric_samples(exposition, "rentals_outbox_pending") == [({}, 1.0)]
    assert metric_samples(exposition, "rentals_outbox_parked") == [({}, 0.0)]
    deliver(app)
    exposition = client.get("/metrics", headers=health_headers).get_data(as_text=True)
    assert metric_samples(exposition, "rentals_outbox_pending") == [({}, 0.0)]


def test_delivery_upgrades_with_starttls_and_logs_in(
    make_app, make_user, make_customer, make_product, tmp_path, monkeypatch
):
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts the test's certificate, and only it
    server = SmtpServer(tls=(cert, key))
    server.start()
    try:
        app = make_app(SMTP_URL=server.url)
        client, headers = app.test_client(), bearer(app, make_user(role="staff"))
        book(client, headers, make_customer(email="tls@example.com"), make_product(), datetime.date(2031, 11, 1))
        assert deliver(app)["delivered"] == 1
        wrong = make_app(SMTP_URL=server.url.replace(server.password, "wrong"))
        book(client, headers, make_customer(email="tls2@example.com"), make_product(), datetime.date(2031, 11, 1))
        assert deliver(wrong) == {"delivered": 0, "failed": 1, "parked": 0, "given_back": 0}
    finally:
        server.stop()
    assert server.logins == ["mailer"]
    assert [r for r, _ in server.received] == [["tls@example.com"]]
