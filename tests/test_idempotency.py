"""Safe retries: a POST sent again with its Idempotency-Key gets the first reply, never a second write."""

from __future__ import annotations

import datetime
import json
import socket
import struct

import pytest

from tests.helpers import AppThread, bearer, wait_until
from tests.support.faults import row_locked, waiting_bookings_of
from tests.support.gunicorn import start_gunicorn, stop_gunicorn

pytestmark = pytest.mark.both_routes

KEY = "Idempotency-Key"
D = datetime.date


def count(conn, table: str) -> int:
    """Return how many rows `table` holds, as another session sees them."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


def booking(customer: dict, product: dict, start: str = "2030-03-01", end: str = "2030-03-04") -> dict:
    """Return the body of a booking of `product` for `customer`."""
    return {"customer_id": customer["id"], "product_id": product["id"], "start_date": start, "end_date": end}


def test_a_retry_with_the_same_key_replays_the_reply_and_writes_once(client, staff_headers, admin_conn):
    headers = {**staff_headers, KEY: "create-ada-1"}
    body = {"full_name": "Ada Lovelace", "email": None}
    first = client.post("/api/customers", json=body, headers=headers)
    again = client.post("/api/customers", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count(admin_conn, "customers") == 1, "the retry created a second customer"
    # Without the key, the same body is a new request.
    assert client.post("/api/customers", json=body, headers=staff_headers).status_code == 201
    assert count(admin_conn, "customers") == 2


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/customers", {"full_name": "Grace Hopper"}),
        ("POST", "/api/products", {"sku": "TENT-1", "name": "Tent", "category": "camping", "daily_rate_cents": 900}),
    ],
    ids=["other-body", "other-path"],
)
def test_the_same_key_with_another_request_is_422_and_runs_nothing(
    client, staff_headers, admin_conn, method, path, body
):
    headers = {**staff_headers, KEY: "reused-key"}
    assert client.post("/api/customers", json={"full_name": "Ada Lovelace"}, headers=headers).status_code == 201
    before = count(admin_conn, "customers"), count(admin_conn, "products")
    r = client.open(path, method=method, json=body, headers=headers)
    assert r.status_code == 422
    assert r.json["error"]["code"] == "idempotency_key_reused"
    assert (count(admin_conn, "customers"), count(admin_conn, "products")) == before


def test_keys_are_scoped_to_the_user(app, client, make_user, admin_conn):
    body = {"full_name": "Ada Lovelace"}
    for user in (make_user("staff"), make_user("staff")):
        r = client.post("/api/customers", json=body, headers={**bearer(app, user), KEY: "same-key"})
        assert r.status_code == 201
        assert "Idempotent-Replayed" not in r.headers
    assert count(admin_conn, "customers") == 2


def test_an_error_reply_is_stored_and_replayed_too(client, staff_headers, make_customer, make_product, admin_conn):
    customer, product = make_customer(), make_product()
    assert client.post("/api/rentals", json=booking(customer, product), headers=staff_headers).status_code == 201
    headers = {**staff_headers, KEY: "overlapping-booking"}
    body = booking(make_customer(), product, "2030-03-02", "2030-03-05")
    first = client.post("/api/rentals", json=body, headers=headers)
    # The conflict's reply names the rental in the way: the query that finds it ran in the
    # same transaction as the failed insert.
    assert first.status_code == 409, first.json
    assert first.json["error"]["details"]["conflicting_rental"]["start_date"] == "2030-03-01"
    again = client.post("/api/rentals", json=body, headers=headers)
    assert (again.status_code, again.json) == (409, first.json)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count(admin_conn, "rentals") == 1


def test_a_concurrent_request_with_the_key_is_409_request_in_progress(
    make_app, database_url, make_user, make_customer, make_product, admin_conn
):
    app = make_app()
    headers = {**bearer(app, make_user("staff")), KEY: "slow-booking"}
    body = booking(make_customer(), make_product())
    client = app.test_client()
    with row_locked(database_url, body["product_id"]):
        first = AppThread(app, lambda: client.post("/api/rentals", json=body, headers=headers))
        first.start()
        # The first request waits for the product's row lock, holding the key's lock.
        assert wait_until(lambda: waiting_bookings_of(admin_conn, body["product_id"]) == 1, timeout=10)
        second = client.post("/api/rentals", json=body, headers=headers)
        assert second.status_code == 409
        assert second.json["error"]["code"] == "request_in_progress"
    first.join(10)
    assert first.error is None
    assert first.result.status_code == 201, first.result.json
    third = client.post("/api/rentals", json=body, headers=headers)
    assert (third.status_code, third.json) == (201, first.result.json)
    assert third.headers["Idempotent-Replayed"] == "true"
    assert count(admin_conn, "rentals") == 1


def test_a_503_is_not_stored_and_its_write_is_rolled_back(
    make_app, database_url, make_user, make_customer, make_product, admin_conn
):
    # The request's database budget (not a per-app lock timeout, which behind PgBouncer the
    # role would override) ends the booking's wait for the product's row lock.
    app = make_app(DB_REQUEST_BUDGET_MS=300)
    headers = {**bearer(app, make_user("staff")), KEY: "booking-after-timeout"}
    body = booking(make_customer(), make_product())
    client = app.test_client()
    with row_locked(database_url, body["product_id"]):
        r = client.post("/api/rentals", json=body, headers=headers)
    assert r.status_code == 503
    assert r.json["error"]["code"] == "query_timeout"
    assert count(admin_conn, "idempotency_keys") == 0
    assert count(admin_conn, "rentals") == 0
    # The retry runs for real: nothing was stored to replay.
    again = client.post("/api/rentals", json=body, headers=headers)
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again.headers
    assert count(admin_conn, "rentals") == 1


def test_an_expired_key_runs_the_request_again(client, staff_headers, admin_conn):
    headers = {**staff_headers, KEY: "old-key"}
    assert client.post("/api/customers", json={"full_name": "Ada"}, headers=headers).status_code == 201
    with admin_conn.cursor() as cur:
        cur.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
    r = client.post("/api/customers", json={"full_name": "Ada"}, headers=headers)
    assert r.status_code == 201
    assert "Idempotent-Replayed" not in r.headers
    assert count(admin_conn, "customers") == 2
    assert count(admin_conn, "idempotency_keys") == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_400(client, staff_headers, admin_conn, key):
    r = client.post("/api/customers", json={"full_name": "Ada"}, headers={**staff_headers, KEY: key})
    assert r.status_code == 400
    assert r.json["error"]["code"] == "invalid_idempotency_key"
    assert count(admin_conn, "customers") == 0


def test_every_post_but_login_declares_the_key_in_the_openapi_document(client):
    doc = client.get("/api/openapi.json").json
    posts = {path: ops["post"] for path, ops in doc["paths"].items() if "post" in ops}
    assert "/api/customers" in posts and "/api/rentals/{rental_id}/cancel" in posts
    for path, operation in posts.items():
        declared = [p for p in operation.get("parameters", []) if p["name"] == KEY and p["in"] == "header"]
        if path == "/api/auth/login":
            assert not declared, "a login's reply is a credential: it is never stored"
            continue
        assert declared, f"POST {path} does not declare {KEY}"
        assert {"409", "422"} <= set(operation["responses"]), path
        ok = [reply for status, reply in operation["responses"].items() if status.startswith("2")]
        assert all("Idempotent-Replayed" in reply.get("headers", {}) for reply in ok), path


@pytest.mark.slow
def test_a_retry_after_the_connection_dropped_gets_the_booking_not_a_409(
    database_url, route_settings, admin_conn, make_user, make_customer, make_product
):
    # The audit's case: the client sent a whole POST /api/rentals and lost the connection
    # before the reply; the rental was created. Its retry must get that rental back.
    process, port = start_gunicorn(database_url, **route_settings)
    try:
        from apps.api.app.auth import token_serializer

        user = make_user("staff")
        token = token_serializer("test-secret-key").dumps({"sub": user["id"], "role": user["role"]})
        body = json.dumps(booking(make_customer(), make_product())).encode()
        request = (
            f"POST /api/rentals HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{KEY}: dropped-once\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            # Reset the connection at once, without reading the reply.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert wait_until(lambda: count(admin_conn, "rentals") == 1, timeout=10)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 201"), head
        assert b"idempotent-replayed: true" in head.lower()
        with admin_conn.cursor() as cur:
            cur.execute("SELECT id FROM rentals")
            assert json.loads(payload)["id"] == cur.fetchone()[0]
        assert count(admin_conn, "rentals") == 1
    finally:
        stop_gunicorn(process)
