"""Products: create, read, change, delete, filters (category, active, availability), and bad inputs."""

from __future__ import annotations

import datetime

import pytest

pytestmark = pytest.mark.both_routes

D = datetime.date


def test_create_product_returns_it_whole_with_201(client, staff_headers):
    body = {"sku": "CAM-001", "name": "Canon EOS R6", "category": "cameras", "daily_rate_cents": 4999}
    r = client.post("/api/products", json=body, headers=staff_headers)
    assert r.status_code == 201, r.json
    assert r.json == r.json | body | {"deposit_cents": 0, "active": True}
    assert r.headers["Location"] == f"/api/products/{r.json['id']}"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sku": None}, "sku"),
        ({"sku": "has space"}, "sku"),
        ({"name": ""}, "name"),
        ({"category": 3}, "category"),
        ({"daily_rate_cents": 0}, "daily_rate_cents"),
        ({"daily_rate_cents": -5}, "daily_rate_cents"),
        ({"daily_rate_cents": 12.5}, "daily_rate_cents"),
        ({"daily_rate_cents": "1000"}, "daily_rate_cents"),
        ({"daily_rate_cents": True}, "daily_rate_cents"),
        ({"daily_rate_cents": 10**12}, "daily_rate_cents"),
        ({"deposit_cents": -1}, "deposit_cents"),
        ({"active": "yes"}, "active"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_create_product_rejects_bad_fields(client, staff_headers, change, field):
    body = {"sku": "CAM-001", "name": "Camera", "category": "cameras", "daily_rate_cents": 4999} | change
    r = client.post("/api/products", json=body, headers=staff_headers)
    assert r.status_code == 400, r.json
    assert field in r.json["error"]["details"], r.json


def test_sku_is_unique(client, staff_headers, make_product):
    make_product(sku="DRN-1")
    body = {"sku": "DRN-1", "name": "Drone", "category": "drones", "daily_rate_cents": 9000}
    r = client.post("/api/products", json=body, headers=staff_headers)
    assert r.status_code == 409
    assert r.json["error"]["code"] == "sku_taken"


def test_get_and_patch_product(client, staff_headers, make_product):
    product = make_product(daily_rate_cents=1000)
    assert client.get(f"/api/products/{product['id']}", headers=staff_headers).json["sku"] == product["sku"]
    r = client.patch(
        f"/api/products/{product['id']}", json={"daily_rate_cents": 1200, "active": False}, headers=staff_headers
    )
    assert r.status_code == 200, r.json
    assert (r.json["daily_rate_cents"], r.json["active"], r.json["name"]) == (1200, False, product["name"])
    assert client.get("/api/products/987654", headers=staff_headers).status_code == 404
    assert client.patch("/api/products/987654", json={"name": "x"}, headers=staff_headers).status_code == 404


@pytest.mark.parametrize("body", [{}, {"active": None}, {"daily_rate_cents": 0}, {"sku": ""}, {"extra": 1}])
def test_patch_product_rejects_bad_changes(client, staff_headers, make_product, body):
    product = make_product()
    assert client.patch(f"/api/products/{product['id']}", json=body, headers=staff_headers).status_code == 400


def test_delete_product(client, admin_headers, staff_headers, make_product, make_customer, make_rental):
    free, booked = make_product(), make_product()
    make_rental(make_customer(), booked, D(2030, 5, 1), D(2030, 5, 2))
    assert client.delete(f"/api/products/{free['id']}", headers=staff_headers).status_code == 403
    assert client.delete(f"/api/products/{free['id']}", headers=admin_headers).status_code == 204
    r = client.delete(f"/api/products/{booked['id']}", headers=admin_headers)
    assert r.status_code == 409
    assert r.json["error"]["code"] == "product_has_rentals"
    assert client.delete(f"/api/products/{free['id']}", headers=admin_headers).status_code == 404


def test_filters_by_category_active_and_search(client, staff_headers, make_product):
    cam = make_product(category="cameras", name="Sony A7", sku="CAM-7")
    make_product(category="cameras", name="Old Nikon", active=False)
    make_product(category="bikes", name="City Bike")

    def ids(query):
        r = client.get("/api/products", query_string=query, headers=staff_headers)
        assert r.status_code == 200, r.json
        return [p["id"] for p in r.json["items"]]

    assert len(ids({"category": "cameras"})) == 2
    assert ids({"category": "cameras", "active": "true"}) == [cam["id"]]
    assert len(ids({"active": "false"})) == 1
    assert ids({"q": "cam-7"}) == [cam["id"]]
    assert ids({"q": "sony"}) == [cam["id"]]
    assert ids({"category": "boats"}) == []


def test_availability_keeps_active_products_free_for_the_whole_range(
    client, staff_headers, make_product, make_customer, make_rental
):
    customer = make_customer()
    free = make_product()
    busy = make_product()
    touching = make_product()
    cancelled_only = make_product()
    returned_only = make_product()
    make_product(active=False)  # free but inactive: never offered
    make_rental(customer, busy, D(2030, 6, 5), D(2030, 6, 8), status="reserved")
    make_rental(customer, touching, D(2030, 6, 10), D(2030, 6, 12), status="active")  # starts on the end day
    make_rental(customer, touching, D(2030, 5, 28), D(2030, 6, 1), status="reserved")  # ends on the start day
    make_rental(customer, cancelled_only, D(2030, 6, 2), D(2030, 6, 4), status="cancelled")
    make_rental(customer, returned_only, D(2030, 6, 2), D(2030, 6, 4), status="returned")
    r = client.get(
        "/api/products",
        query_string={"available_from": "2030-06-01", "available_to": "2030-06-10"},
        headers=staff_headers,
    )
    assert r.status_code == 200, r.json
    assert [p["id"] for p in r.json["items"]] == [free["id"], touching["id"], cancelled_only["id"], returned_only["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("available_from=2030-01-01", "query"),
        ("available_to=2030-01-01", "query"),
        ("available_from=2030-01-05&available_to=2030-01-05", "query"),
        ("available_from=2030-13-01&available_to=2030-12-31", "available_from"),
        ("available_from=tomorrow&available_to=2030-12-31", "available_from"),
        ("active=maybe", "active"),
        ("limit=1000", "limit"),
        ("cursor=eyJ4Ijox", "cursor"),
        ("colour=red", "colour"),
    ],
)
def test_list_rejects_bad_filters(client, staff_headers, query, field):
    r = client.get(f"/api/products?{query}", headers=staff_headers)
    assert r.status_code == 400, r.json
    assert field in r.json["error"]["details"], r.json


def test_pages_cover_every_product_once(client, staff_headers, make_product):
    made = [make_product()["id"] for _ in range(7)]
    seen, cursor = [], None
    while True:
        r = client.get(
            "/api/products", query_string={"limit": 3} | ({"cursor": cursor} if cursor else {}), headers=staff_headers
        )
        seen += [p["id"] for p in r.json["items"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert seen == made
