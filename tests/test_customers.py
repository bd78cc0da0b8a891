"""Customers: create, read, change, delete, search and keyset pages, and every bad input."""

from __future__ import annotations

import pytest

from tests.helpers import insert_row

pytestmark = pytest.mark.both_routes


def test_create_customer_returns_it_whole_with_201_and_location(client, staff_headers):
    body = {"full_name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000", "notes": "VIP"}
    r = client.post("/api/customers", json=body, headers=staff_headers)
    assert r.status_code == 201, r.json
    assert r.json == r.json | body
    assert isinstance(r.json["id"], int)
    assert r.headers["Location"] == f"/api/customers/{r.json['id']}"
    assert set(r.json) == {"id", "full_name", "email", "phone", "notes", "created_at", "updated_at"}


def test_create_customer_needs_only_a_name(client, staff_headers):
    r = client.post("/api/customers", json={"full_name": "  Alan Turing  "}, headers=staff_headers)
    assert r.status_code == 201, r.json
    assert r.json["full_name"] == "Alan Turing"
    assert r.json["email"] is None and r.json["phone"] is None and r.json["notes"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "full_name"),
        ({"full_name": ""}, "full_name"),
        ({"full_name": "   "}, "full_name"),
        ({"full_name": 42}, "full_name"),
        ({"full_name": None}, "full_name"),
        ({"full_name": "x" * 201}, "full_name"),
        ({"full_name": "A", "email": "not-an-email"}, "email"),
        ({"full_name": "A", "email": 5}, "email"),
        ({"full_name": "A", "phone": "call me"}, "phone"),
        ({"full_name": "A", "notes": "n" * 2001}, "notes"),
        ({"full_name": "A", "nickname": "Al"}, "nickname"),
        ({"full_name": "A", "id": 7}, "id"),
    ],
)
def test_create_customer_rejects_bad_fields_with_400_per_field(client, staff_headers, body, field):
    r = client.post("/api/customers", json=body, headers=staff_headers)
    assert r.status_code == 400, r.json
    assert r.json["error"]["code"] == "validation_error"
    assert field in r.json["error"]["details"], r.json


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        ('{"full_name": "A"', "application/json", "not valid JSON"),
        ("", "application/json", "needs a JSON body"),
        ('["A"]', "application/json", "dictionary"),
    ],
)
def test_create_customer_rejects_bodies_that_are_not_a_json_object(client, staff_headers, data, content_type, message):
    r = client.post("/api/customers", data=data, content_type=content_type, headers=staff_headers)
    assert r.status_code == 400, r.json
    assert message in str(r.json["error"]), r.json
    assert "body" in r.json["error"]["details"]


def test_email_is_unique_whatever_its_case(client, staff_headers, make_customer):
    make_customer(email="grace@example.com")
    r = client.post("/api/customers", json={"full_name": "G", "email": "GRACE@example.com"}, headers=staff_headers)
    assert r.status_code == 409
    assert r.json["error"]["code"] == "email_taken"
    assert r.json["error"]["details"] == {"email": ["already taken"]}


def test_get_customer(client, staff_headers, make_customer):
    customer = make_customer(full_name="Grace Hopper")
    r = client.get(f"/api/customers/{customer['id']}", headers=staff_headers)
    assert r.status_code == 200
    assert r.json["full_name"] == "Grace Hopper"
    assert r.json["id"] == customer["id"]


@pytest.mark.parametrize(("path", "status"), [("/api/customers/999999", 404), ("/api/customers/0", 400)])
def test_get_missing_customer(client, staff_headers, path, status):
    r = client.get(path, headers=staff_headers)
    assert r.status_code == status
    assert "error" in r.json


def test_get_customer_with_a_non_numeric_id_is_404(client, staff_headers):
    assert client.get("/api/customers/abc", headers=staff_headers).status_code == 404


def test_patch_changes_only_the_fields_sent_and_can_clear_optional_ones(client, staff_headers, make_customer):
    customer = make_customer(full_name="Old Name", email="old@example.com", phone="123")
    r = client.patch(f"/api/customers/{customer['id']}", json={"email": None, "notes": "hi"}, headers=staff_headers)
    assert r.status_code == 200, r.json
    assert r.json["full_name"] == "Old Name"
    assert r.json["email"] is None
    assert r.json["phone"] == "123"
    assert r.json["notes"] == "hi"
    assert r.json["updated_at"] > r.json["created_at"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"full_name": None}, "full_name"),
        ({"full_name": ""}, "full_name"),
        ({"email": "x"}, "email"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_patch_rejects_bad_changes(client, staff_headers, make_customer, body, field):
    customer = make_customer()
    r = client.patch(f"/api/customers/{customer['id']}", json=body, headers=staff_headers)
    assert r.status_code == 400, r.json
    assert field in r.json["error"]["details"]


def test_patch_missing_customer_is_404(client, staff_headers):
    assert client.patch("/api/customers/424242", json={"notes": "x"}, headers=staff_headers).status_code == 404


def test_patch_to_a_taken_email_is_409(client, staff_headers, make_customer):
    make_customer(email="taken@example.com")
    other = make_customer()
    r = client.patch(f"/api/customers/{other['id']}", json={"email": "taken@example.com"}, headers=staff_headers)
    assert r.status_code == 409
    assert r.json["error"]["code"] == "email_taken"


def test_admin_deletes_a_customer_without_rentals(client, admin_headers, make_customer):
    customer = make_customer()
    r = client.delete(f"/api/customers/{customer['id']}", headers=admin_headers)
    assert r.status_code == 204
    assert r.data == b""
    assert client.get(f"/api/customers/{customer['id']}", headers=admin_headers).status_code == 404
    assert client.delete(f"/api/customers/{customer['id']}", headers=admin_headers).status_code == 404


def test_delete_customer_with_rentals_is_409(client, admin_headers, make_customer, make_product, make_rental):
    import datetime

    customer = make_customer()
    make_rental(customer, make_product(), datetime.date(2030, 1, 1), datetime.date(2030, 1, 3))
    r = client.delete(f"/api/customers/{customer['id']}", headers=admin_headers)
    assert r.status_code == 409
    assert r.json["error"]["code"] == "customer_has_rentals"


def test_staff_may_not_delete_customers(client, staff_headers, make_customer):
    customer = make_customer()
    r = client.delete(f"/api/customers/{customer['id']}", headers=staff_headers)
    assert r.status_code == 403
    assert r.json["error"]["code"] == "forbidden_role"


def test_search_matches_name_email_or_phone_case_insensitively(client, staff_headers, make_customer):
    ada = make_customer(full_name="Ada Lovelace", email="ada@math.example", phone="+1 555 0100")
    make_customer(full_name="Alan Turing", email="alan@example.com", phone="+1 555 0199")
    for q in ("lovelace", "ADA@MATH", "0100"):
        r = client.get("/api/customers", query_string={"q": q}, headers=staff_headers)
        assert [c["id"] for c in r.json["items"]] == [ada["id"]], q
    assert client.get("/api/customers?q=555", headers=staff_headers).json["next_cursor"] is None
    assert len(client.get("/api/customers?q=555", headers=staff_headers).json["items"]) == 2


def test_search_treats_like_wildcards_as_text(client, staff_headers, make_customer):
    make_customer(full_name="Plain Name")
    percent = make_customer(full_name="100% Cotton Ltd")
    assert [c["id"] for c in client.get("/api/customers?q=%25", headers=staff_headers).json["items"]] == [percent["id"]]
    assert client.get("/api/customers?q=_", headers=staff_headers).json["items"] == []


def test_pages_walk_every_customer_once_in_id_order_while_rows_are_inserted(
    client, staff_headers, make_customer, admin_conn
):
    existing = [make_customer()["id"] for _ in range(23)]
    seen, cursor, inserted = [], None, 0
    while True:
        params = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        r = client.get("/api/customers", query_string=params, headers=staff_headers)
        assert r.status_code == 200, r.json
        assert len(r.json["items"]) <= 5
        seen += [c["id"] for c in r.json["items"]]
        # Someone adds a customer between every two pages.
        insert_row(admin_conn, "customers", full_name=f"Late {inserted}")
        inserted += 1
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert set(existing) <= set(seen)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("q=", "q"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=WyJyZW50YWxzIiwiMjAyNC0wMS0wMSIsMV0", "cursor"),  # a rentals cursor
        ("sort=name", "sort"),
    ],
)
def test_list_rejects_bad_query_parameters(client, staff_headers, query, field):
    r = client.get(f"/api/customers?{query}", headers=staff_headers)
    assert r.status_code == 400, r.json
    assert field in r.json["error"]["details"], r.json


def test_customers_need_a_token(client):
    r = client.get("/api/customers")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_token_is_checked_before_the_body(client):
    r = client.post("/api/customers", json={"nickname": "x"})
    assert r.status_code == 401
