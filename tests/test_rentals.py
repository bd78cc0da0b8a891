"""Rentals: booking under the exclusion constraint, the list, status transitions, and bad inputs."""

from __future__ import annotations

import datetime
import threading

import pytest

from tests.helpers import bearer, insert_row

pytestmark = pytest.mark.both_routes

D = datetime.date


def book(client, headers, customer, product, start, end):
    body = {"customer_id": customer["id"], "product_id": product["id"], "start_date": start, "end_date": end}
    return client.post("/api/rentals", json=body, headers=headers)


def test_booking_fixes_rate_and_total_and_embeds_names(client, staff_headers, staff_user, make_customer, make_product):
    customer = make_customer(full_name="Ada Lovelace")
    product = make_product(name="Canon EOS R6", sku="CAM-1", daily_rate_cents=2500)
    r = book(client, staff_headers, customer, product, "2030-03-01", "2030-03-04")
    assert r.status_code == 201, r.json
    assert r.headers["Location"] == f"/api/rentals/{r.json['id']}"
    assert (
        r.json
        | {
            "customer_id": customer["id"],
            "customer_name": "Ada Lovelace",
            "product_id": product["id"],
            "product_name": "Canon EOS R6",
            "product_sku": "CAM-1",
            "start_date": "2030-03-01",
            "end_date": "2030-03-04",
            "status": "reserved",
            "daily_rate_cents": 2500,
            "total_cents": 7500,
            "created_by": staff_user["id"],
            "returned_at": None,
        }
        == r.json
    )
    # A later price change leaves the booking alone.
    client.patch(f"/api/products/{product['id']}", json={"daily_rate_cents": 9999}, headers=staff_headers)
    assert client.get(f"/api/rentals/{r.json['id']}", headers=staff_headers).json["total_cents"] == 7500


def test_overlapping_booking_is_409_naming_the_rental_in_the_way(client, staff_headers, make_customer, make_product):
    customer, product = make_customer(), make_product()
    first = book(client, staff_headers, customer, product, "2030-03-01", "2030-03-05").json
    r = book(client, staff_headers, make_customer(), product, "2030-03-04", "2030-03-06")
    assert r.status_code == 409
    assert r.json["error"]["code"] == "product_unavailable"
    assert str(first["id"]) in r.json["error"]["message"]
    assert r.json["error"]["details"]["conflicting_rental"] == {
        "id": first["id"],
        "start_date": "2030-03-01",
        "end_date": "2030-03-05",
        "status": "reserved",
    }


def test_back_to_back_bookings_fit_because_the_end_is_exclusive(client, staff_headers, make_customer, make_product):
    customer, product = make_customer(), make_product()
    assert book(client, staff_headers, customer, product, "2030-03-01", "2030-03-05").status_code == 201
    assert book(client, staff_headers, customer, product, "2030-03-05", "2030-03-06").status_code == 201
    assert book(client, staff_headers, customer, product, "2030-02-27", "2030-03-01").status_code == 201


def test_cancelled_and_returned_rentals_free_their_dates(
    client, staff_headers, make_customer, make_product, make_rental
):
    customer, product = make_customer(), make_product()
    make_rental(customer, product, D(2030, 4, 1), D(2030, 4, 5), status="cancelled")
    make_rental(customer, product, D(2030, 4, 1), D(2030, 4, 5), status="returned")
    assert book(client, staff_headers, customer, product, "2030-04-02", "2030-04-03").status_code == 201


def test_inactive_product_is_422(client, staff_headers, make_customer, make_product):
    r = book(client, staff_headers, make_customer(), make_product(active=False), "2030-03-01", "2030-03-02")
    assert r.status_code == 422
    assert r.json["error"]["code"] == "product_inactive"


@pytest.mark.parametrize(("missing", "code"), [("customer", "unknown_customer"), ("product", "unknown_product")])
def test_unknown_customer_or_product_is_422(client, staff_headers, make_customer, make_product, missing, code):
    customer, product = make_customer(), make_product()
    (customer if missing == "customer" else product)["id"] = 999_999
    r = book(client, staff_headers, customer, product, "2030-03-01", "2030-03-02")
    assert r.status_code == 422
    assert r.json["error"]["code"] == code
    assert f"{missing}_id" in r.json["error"]["details"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"start_date": "2030-03-05", "end_date": "2030-03-05"}, "end_date"),
        ({"start_date": "2030-03-05", "end_date": "2030-03-01"}, "end_date"),
        ({"start_date": "2030-01-01", "end_date": "2031-06-01"}, "end_date"),
        ({"start_date": "03/05/2030"}, "start_date"),
        ({"start_date": 20300305}, "start_date"),
        ({"start_date": "2030-02-30"}, "start_date"),
        ({"end_date": None}, "end_date"),
        ({"customer_id": "1"}, "customer_id"),
        ({"customer_id": 0}, "customer_id"),
        ({"product_id": 1.5}, "product_id"),
        ({"product_id": 2**63}, "product_id"),
        ({"status": "active"}, "status"),
        ({"total_cents": 1}, "total_cents"),
    ],
)
def test_booking_rejects_bad_fields(client, staff_headers, change, field):
    body = {"customer_id": 1, "product_id": 1, "start_date": "2030-03-01", "end_date": "2030-03-03"} | change
    r = client.post("/api/rentals", json=body, headers=staff_headers)
    assert r.status_code == 400, r.json
    assert field in r.json["error"]["details"], r.json


def test_missing_fields_are_each_named(client, staff_headers):
    r = client.post("/api/rentals", json={}, headers=staff_headers)
    assert r.status_code == 400
    assert set(r.json["error"]["details"]) == {"customer_id", "product_id", "start_date", "end_date"}
    assert r.json["error"]["details"]["start_date"] == ["field required"]


def test_fifty_concurrent_overlapping_bookings_give_exactly_one_rental(
    make_app, staff_user, make_customer, make_product, admin_conn
):
    app = make_app(DB_POOL_MAX_CONNECTIONS=20, DB_POOL_TIMEOUT=10)
    headers = bearer(app, staff_user)
    product = make_product()
    customers = [make_customer() for _ in range(50)]
    barrier = threading.Barrier(50)
    statuses: list[int] = []

    def attempt(i: int) -> None:
        client = app.test_client()
        start = D(2030, 7, 1) + datetime.timedelta(days=i % 3)
        barrier.wait()
        r = book(
            client, headers, customers[i], product, start.isoformat(), (start + datetime.timedelta(days=5)).isoformat()
        )
        statuses.append(r.status_code)
        if r.status_code == 409:
            assert r.json["error"]["code"] == "product_unavailable"

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [201] + [409] * 49
    with admin_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM rentals WHERE product_id = %s", (product["id"],))
        assert cur.fetchone()[0] == 1


@pytest.mark.parametrize(
    ("status", "action", "expected"),
    [
        ("reserved", "activate", "active"),
        ("reserved", "cancel", "cancelled"),
        ("active", "return", "returned"),
        ("reserved", "return", None),
        ("active", "activate", None),
        ("active", "cancel", None),
        ("returned", "activate", None),
        ("returned", "return", None),
        ("returned", "cancel", None),
        ("cancelled", "activate", None),
        ("cancelled", "return", None),
        ("cancelled", "cancel", None),
    ],
)
def test_status_transitions(client, staff_headers, make_customer, make_product, make_rental, status, action, expected):
    rental = make_rental(make_customer(), make_product(), D(2030, 8, 1), D(2030, 8, 3), status=status)
    r = client.post(f"/api/rentals/{rental['id']}/{action}", headers=staff_headers)
    if expected is None:
        assert r.status_code == 409, r.json
        assert r.json["error"]["code"] == "illegal_transition"
        assert r.json["error"]["details"]["current_status"] == status
        assert status in r.json["error"]["message"]
    else:
        assert r.status_code == 200, r.json
        assert r.json["status"] == expected
        assert (r.json["returned_at"] is not None) == (expected == "returned")
        assert r.json["customer_name"].startswith("Customer")


def test_cancelling_frees_the_dates_for_another_booking(client, staff_headers, make_customer, make_product):
    customer, product = make_customer(), make_product()
    first = book(client, staff_headers, customer, product, "2030-09-01", "2030-09-04").json
    assert book(client, staff_headers, customer, product, "2030-09-02", "2030-09-03").status_code == 409
    assert client.post(f"/api/rentals/{first['id']}/cancel", headers=staff_headers).status_code == 200
    assert book(client, staff_headers, customer, product, "2030-09-02", "2030-09-03").status_code == 201


def test_transition_of_a_missing_rental_is_404(client, staff_headers):
    assert client.post("/api/rentals/777777/activate", headers=staff_headers).status_code == 404
    assert client.get("/api/rentals/777777", headers=staff_headers).status_code == 404


@pytest.fixture
def rentals_world(make_customer, make_product, make_rental):
    """Two customers, two products, six rentals across statuses and dates."""
    ada, bob = make_customer(full_name="Ada"), make_customer(full_name="Bob")
    cam, bike = make_product(name="Camera"), make_product(name="Bike")
    rows = [
        make_rental(ada, cam, D(2030, 1, 1), D(2030, 1, 5), status="returned"),
        make_rental(bob, cam, D(2030, 1, 10), D(2030, 1, 12), status="active"),
        make_rental(ada, bike, D(2030, 1, 10), D(2030, 1, 20), status="reserved"),
        make_rental(bob, bike, D(2030, 1, 20), D(2030, 1, 21), status="reserved"),
        make_rental(ada, cam, D(2030, 2, 1), D(2030, 2, 3), status="cancelled"),
        make_rental(bob, cam, D(2030, 2, 1), D(2030, 2, 3), status="reserved"),
    ]
    return {"ada": ada, "bob": bob, "cam": cam, "bike": bike, "rentals": rows}


def test_list_is_latest_start_first_with_names(client, staff_headers, rentals_world):
    r = client.get("/api/rentals", headers=staff_headers)
    assert r.status_code == 200, r.json
    keys = [(item["start_date"], item["id"]) for item in r.json["items"]]
    assert keys == sorted(keys, reverse=True)
    assert len(keys) == 6
    first = r.json["items"][0]
    assert (first["customer_name"], first["product_name"]) == ("Bob", "Camera")
    assert r.json["next_cursor"] is None


def test_list_filters(client, staff_headers, rentals_world):
    w = rentals_world
    ids = [row["id"] for row in w["rentals"]]

    def listed(**query):
        r = client.get("/api/rentals", query_string=query, headers=staff_headers)
        assert r.status_code == 200, r.json
        return sorted(item["id"] for item in r.json["items"])

    assert listed(status="reserved") == [ids[2], ids[3], ids[5]]
    assert listed(customer_id=w["ada"]["id"]) == [ids[0], ids[2], ids[4]]
    assert listed(product_id=w["bike"]["id"]) == [ids[2], ids[3]]
    assert listed(product_id=w["cam"]["id"], status="active") == [ids[1]]
    # Overlap with [from, to): end dates are exclusive on both sides.
    assert listed(**{"from": "2030-01-05", "to": "2030-01-10"}) == []
    assert listed(**{"from": "2030-01-04", "to": "2030-01-11"}) == [ids[0], ids[1], ids[2]]
    assert listed(**{"from": "2030-01-20"}) == [ids[3], ids[4], ids[5]]
    assert listed(to="2030-01-02") == [ids[0]]


def test_list_pages_walk_every_rental_once_in_order_while_rows_are_inserted(
    client, staff_headers, make_customer, make_product, make_rental, admin_conn
):
    customer = make_customer()
    products = [make_product() for _ in range(3)]
    existing = []
    for i in range(24):
        start = D(2030, 1, 1) + datetime.timedelta(days=(i * 7) % 40)
        existing.append(make_rental(customer, products[i % 3], start, start + datetime.timedelta(days=1), "cancelled"))
    seen, cursor, n = [], None, 0
    while True:
        r = client.get(
            "/api/rentals", query_string={"limit": 5} | ({"cursor": cursor} if cursor else {}), headers=staff_headers
        )
        assert r.status_code == 200, r.json
        seen += [(item["start_date"], item["id"]) for item in r.json["items"]]
        # Rentals keep arriving between pages, before and after the cursor.
        for day in (D(2029, 12, 1), D(2030, 6, 1)):
            start = day + datetime.timedelta(days=n)
            insert_row(
                admin_conn,
                "rentals",
                customer_id=customer["id"],
                product_id=products[0]["id"],
                start_date=start,
                end_date=start + datetime.timedelta(days=1),
                status="cancelled",
                daily_rate_cents=100,
                total_cents=100,
            )
        n += 1
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen))
    assert {row["id"] for row in existing} <= {rental_id for _, rental_id in seen}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=lost", "status"),
        ("customer_id=abc", "customer_id"),
        ("product_id=0", "product_id"),
        ("from=2030-02-01&to=2030-01-01", "query"),
        ("from=2030-02-31", "from"),
        ("limit=-1", "limit"),
        ("cursor=WyJjdXN0b21lcnMiLDFd", "cursor"),  # a customers cursor
        ("cursor=WyJyZW50YWxzIiwibm90LWEtZGF0ZSIsMV0", "cursor"),  # a rentals cursor with a bad date
        ("order=asc", "order"),
    ],
)
def test_list_rejects_bad_filters(client, staff_headers, query, field):
    r = client.get(f"/api/rentals?{query}", headers=staff_headers)
    assert r.status_code == 400, r.json
    assert field in r.json["error"]["details"], r.json
