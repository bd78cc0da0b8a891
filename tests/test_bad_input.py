"""Bad input on every kind of endpoint: always a clear 4xx in the JSON error shape, never a 500,
never a partial write.

Malformed JSON, wrong content types, oversize bodies, unknown and missing fields, huge
integers, negative money, inverted date ranges, Unicode and NUL bytes, SQL injection
strings, out-of-range path ids, and garbage in limit and cursor.

Each test walks a list of bad inputs against one database (a fresh database per input
would cost ~0.1 s each); the failure message names the input.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
from urllib.parse import quote

import pytest
from werkzeug.test import EnvironBuilder

from tests.helpers import bearer

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1

CUSTOMER = {"full_name": "Ada Lovelace", "email": "ada@example.com"}
PRODUCT = {"sku": "CAM-001", "name": "Camera", "category": "cameras", "daily_rate_cents": 4999}
RENTAL_DATES = {"start_date": "2031-01-01", "end_date": "2031-01-05"}
# Every endpoint that takes a JSON body, with a body it accepts ({customer}, {product} filled in).
BODY_ENDPOINTS = [
    ("POST", "/api/customers", CUSTOMER),
    ("PATCH", "/api/customers/{customer}", {"notes": "VIP"}),
    ("POST", "/api/products", PRODUCT),
    ("PATCH", "/api/products/{product}", {"name": "Camera II"}),
    ("POST", "/api/rentals", RENTAL_DATES),
]


def assert_error(r, status: int, code: str | None = None, context: object = None) -> dict:
    """Assert a reply is our JSON error shape with `status` (and `code`); return its error."""
    assert r.status_code == status, (context, r.status_code, r.get_data(as_text=True)[:300])
    assert r.mimetype == "application/json", context
    error = r.json["error"]
    assert set(error) == {"code", "message", "details"}, context
    assert isinstance(error["message"], str) and error["message"], context
    assert isinstance(error["details"], dict), context
    if code is not None:
        assert error["code"] == code, (context, error)
    return error


def snapshot(conn) -> tuple:
    """Return what a partial write would change: row counts and the latest updated_at per table."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM products), (SELECT count(*) FROM rentals),"
            " (SELECT max(updated_at) FROM customers), (SELECT max(updated_at) FROM products),"
            " (SELECT max(updated_at) FROM rentals)"
        )
        return cur.fetchone()


@pytest.fixture
def world(make_customer, make_product):
    """A customer and a product to aim the bodies at; their ids by name."""
    return {"customer": make_customer()["id"], "product": make_product()["id"]}


@pytest.fixture
def body_endpoints(world):
    """BODY_ENDPOINTS with real ids in the paths and in the rental's body."""
    filled = []
    for method, path, body in BODY_ENDPOINTS:
        if path == "/api/rentals":
            body = body | {"customer_id": world["customer"], "product_id": world["product"]}
        filled.append((method, path.format(**world), body))
    return filled


# -- the body is not a JSON object -------------------------------------------------------

MALFORMED_JSON = [
    b'{"full_name": "A"',
    b'{"full_name": "A"} trailing',
    b"{'full_name': 'A'}",
    b'{"full_name": NaN}',
    b'{"full_name": Infinity}',
    b'{"full_name": "\xff\xfe"}',
    b'{"full_name": "\\ud800"}',
    b"[" * 100_000 + b"]" * 100_000,
    b"\x00\x01\x02",
    b"null",
]
NOT_AN_OBJECT = [b'"a string"', b"42", b"true", b'["A"]', b"{}"]


def test_malformed_json_is_400_and_writes_nothing(client, admin_headers, admin_conn, body_endpoints):
    before = snapshot(admin_conn)
    for method, path, _ in body_endpoints:
        for data in MALFORMED_JSON:
            r = client.open(path, method=method, data=data, content_type="application/json", headers=admin_headers)
            error = assert_error(r, 400, context=(method, path, data[:40]))
            assert error["code"] in ("invalid_json", "validation_error"), (path, data[:40], error)
        for data in NOT_AN_OBJECT:
            r = client.open(path, method=method, data=data, content_type="application/json", headers=admin_headers)
            assert_error(r, 400, "validation_error", context=(method, path, data))
    assert snapshot(admin_conn) == before


def test_malformed_login_is_400(client):
    for data in [*MALFORMED_JSON, *NOT_AN_OBJECT]:
        r = client.post("/api/auth/login", data=data, content_type="application/json")
        assert_error(r, 400, context=data[:40])


WRONG_CONTENT_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/jsonx",
    None,
]


def test_wrong_content_type_is_415_and_writes_nothing(client, admin_headers, admin_conn, body_endpoints):
    before = snapshot(admin_conn)
    for method, path, body in [*body_endpoints, ("POST", "/api/auth/login", {"email": "a@b.co", "password": "x"})]:
        for content_type in WRONG_CONTENT_TYPES:
            headers = dict(admin_headers)
            if content_type is not None:
                headers["Content-Type"] = content_type
            r = client.open(path, method=method, data=json.dumps(body), headers=headers)
            error = assert_error(r, 415, "unsupported_media_type", context=(method, path, content_type))
            assert "application/json" in error["message"]
    assert snapshot(admin_conn) == before


def test_json_with_a_charset_or_a_json_suffix_is_accepted(client, admin_headers):
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        body = json.dumps({"full_name": f"Charset {content_type}"})
        r = client.post("/api/customers", data=body, content_type=content_type, headers=admin_headers)
        assert r.status_code == 201, r.json


def test_body_over_max_content_length_is_413_and_writes_nothing(make_app, admin_user, admin_conn, body_endpoints):
    app = make_app(MAX_CONTENT_LENGTH=2048)
    client, headers = app.test_client(), bearer(app, admin_user)
    before = snapshot(admin_conn)
    for method, path, body in [*body_endpoints, ("POST", "/api/auth/login", {"email": "a@b.co"})]:
        big = body | {"notes" if "customers" in path else "password" if "auth" in path else "name": "n" * 4096}
        r = client.open(path, method=method, json=big, headers=headers)
        assert_error(r, 413, "payload_too_large", context=(method, path))
    assert snapshot(admin_conn) == before
    # Just under the limit is served.
    body = json.dumps({"full_name": "Small", "notes": "n" * 1900}).encode()
    assert len(body) < 2048
    assert client.post("/api/customers", data=body, content_type="application/json", headers=headers).status_code == 201


class EndlessBody(io.RawIOBase):
    """A request body that never ends (one more space after `start`, for ever); counts what was read."""

    def __init__(self, start: bytes = b"") -> None:
        self.start, self.read_bytes = start, 0

    def readable(self) -> bool:
        """Say yes: this stream is read."""
        return True

    def readinto(self, buffer) -> int:
        """Fill `buffer` with the next bytes of the body."""
        size = len(buffer)
        data = (self.start[self.read_bytes :] + b" " * size)[:size]
        buffer[:size] = data
        self.read_bytes += size
        return size


def call_streamed(app, method: str, path: str, body: io.RawIOBase, headers: dict[str, str]):
    """Run one request through the whole WSGI app as a server sends a chunked body: no
    Content-Length, `wsgi.input_terminated` set (gunicorn does); return (status, JSON body)."""
    environ = EnvironBuilder(path=path, method=method, headers=headers, content_type="application/json").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": body, "wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    status: list[str] = []
    reply = b"".join(app(environ, lambda line, _headers, _exc=None: status.append(line)))
    return int(status[0][:3]), json.loads(reply)


def test_a_chunked_body_over_max_content_length_is_413_and_read_no_further(
    make_app, admin_user, admin_conn, body_endpoints
):
    # werkzeug stops reading a body without Content-Length at MAX_CONTENT_LENGTH and hands
    # over what it read: the JSON was cut off, and the reply was 400 invalid_json.
    app = make_app(MAX_CONTENT_LENGTH=2048)
    headers = bearer(app, admin_user)
    before = snapshot(admin_conn)
    for method, path, body in [*body_endpoints, ("POST", "/api/auth/login", {"email": "a@b.co", "password": "x"})]:
        endless = EndlessBody(json.dumps(body).encode())
        status, reply = call_streamed(app, method, path, endless, headers)
        assert (status, reply.get("error", {}).get("code")) == (413, "payload_too_large"), (method, path, reply)
        assert endless.read_bytes <= 2048 + 1, (method, path, endless.read_bytes)
    assert snapshot(admin_conn) == before
    # A chunked body of exactly the limit is read whole and served, as with Content-Length.
    exact = json.dumps({"full_name": "Exactly at the limit"}).encode().ljust(2048)
    status, reply = call_streamed(app, "POST", "/api/customers", io.BytesIO(exact), headers)
    assert (status, reply["full_name"]) == (201, "Exactly at the limit"), reply


# -- fields ------------------------------------------------------------------------------


def test_unknown_fields_are_400_each_named_and_write_nothing(client, admin_headers, admin_conn, body_endpoints):
    before = snapshot(admin_conn)
    for method, path, body in [*body_endpoints, ("POST", "/api/auth/login", {"email": "a@b.co", "password": "x"})]:
        r = client.open(path, method=method, json=body | {"is_admin": True, "id": 1}, headers=admin_headers)
        error = assert_error(r, 400, "validation_error", context=(method, path))
        assert error["details"]["is_admin"] == error["details"]["id"] == ["unknown field"], (path, error)
    assert snapshot(admin_conn) == before


def test_missing_fields_are_400_each_named_and_write_nothing(client, admin_headers, admin_conn, world):
    cases = [
        ("POST", "/api/customers", {}, {"full_name"}),
        ("POST", "/api/products", {"sku": "A-1"}, {"name", "category", "daily_rate_cents"}),
        ("POST", "/api/rentals", {"start_date": "2031-01-01"}, {"customer_id", "product_id", "end_date"}),
        ("POST", "/api/auth/login", {"email": "a@example.com"}, {"password"}),
        ("PATCH", f"/api/customers/{world['customer']}", {}, {"body"}),
        ("PATCH", f"/api/products/{world['product']}", {}, {"body"}),
    ]
    before = snapshot(admin_conn)
    for method, path, body, missing in cases:
        error = assert_error(
            client.open(path, method=method, json=body, headers=admin_headers), 400, "validation_error"
        )
        assert missing <= set(error["details"]), (path, error)
    assert snapshot(admin_conn) == before


def test_null_for_a_required_field_is_400(client, admin_headers, admin_conn, body_endpoints):
    before = snapshot(admin_conn)
    for method, path, body in body_endpoints:
        for field in body:
            if field in ("notes", "email", "phone"):  # nullable on purpose
                continue
            r = client.open(path, method=method, json=body | {field: None}, headers=admin_headers)
            error = assert_error(r, 400, "validation_error", context=(path, field))
            assert field in error["details"], (path, field, error)
    assert snapshot(admin_conn) == before


# -- numbers -----------------------------------------------------------------------------

# Raw JSON: the json module would write 10**400 as an integer but cannot parse it back
# as one everywhere, and some of these are not integers at all.
OUT_OF_RANGE_NUMBERS = {
    "int32+1": str(INT32_MAX + 1),
    "int64-max": str(INT64_MAX),
    "int64+1": str(INT64_MAX + 1),
    "2^64": str(2**64),
    "400-digits": "9" * 400,
    "int64-min-1": str(-(2**63) - 1),
    "1e308": "1e308",
    "1e400": "1e400",
    "float": "1.5",
    "integral-float": "10.0",
    "negative": "-1",
    "string": '"100"',
    "bool": "true",
}


def _with_raw(body: dict, field: str, raw: str) -> str:
    body = {key: value for key, value in body.items() if key != field}
    return json.dumps(body)[:-1] + (", " if body else "") + f'"{field}": {raw}' + "}"


@pytest.mark.parametrize("field", ["daily_rate_cents", "deposit_cents"])
def test_money_out_of_range_or_negative_is_400(client, admin_headers, admin_conn, world, field):
    cases = {**OUT_OF_RANGE_NUMBERS, "zero": "0"} if field == "daily_rate_cents" else OUT_OF_RANGE_NUMBERS
    for target, body in [("/api/products", PRODUCT), (f"/api/products/{world['product']}", {"name": "x"})]:
        before = snapshot(admin_conn)
        for name, raw in cases.items():
            method = "POST" if target == "/api/products" else "PATCH"
            data = _with_raw(body, field, raw)
            r = client.open(target, method=method, data=data, content_type="application/json", headers=admin_headers)
            error = assert_error(r, 400, context=(method, field, name))
            assert field in error["details"] or error["code"] == "invalid_json", (field, name, error)
        assert snapshot(admin_conn) == before


def test_the_largest_rate_and_the_longest_rental_do_not_overflow(client, admin_headers, make_customer):
    body = PRODUCT | {"daily_rate_cents": 100_000_000, "deposit_cents": 1_000_000_000}
    product = client.post("/api/products", json=body, headers=admin_headers).json
    booking = {"customer_id": make_customer()["id"], "product_id": product["id"]}
    booking |= {"start_date": "2031-01-01", "end_date": "2032-01-02"}  # 366 days, the longest rental
    r = client.post("/api/rentals", json=booking, headers=admin_headers)
    assert r.status_code == 201, r.json
    assert r.json["total_cents"] == 100_000_000 * 366


def test_rental_ids_out_of_range_are_400(client, admin_headers, admin_conn, body_endpoints):
    body = body_endpoints[-1][2]
    cases = {k: v for k, v in OUT_OF_RANGE_NUMBERS.items() if k not in ("int32+1", "int64-max")}
    cases |= {"zero": "0", "null": "null", "array": "[1]"}
    for field in ("customer_id", "product_id"):
        for name, raw in cases.items():
            data = _with_raw(body, field, raw)
            r = client.post("/api/rentals", data=data, content_type="application/json", headers=admin_headers)
            assert_error(r, 400, context=(field, name))
    assert snapshot(admin_conn)[2] == 0
    # The largest id is valid, and simply does not exist.
    r = client.post("/api/rentals", json=body | {"customer_id": INT64_MAX}, headers=admin_headers)
    assert_error(r, 422, "unknown_customer")


# -- dates -------------------------------------------------------------------------------

BAD_RENTAL_DATES = {
    "inverted": ("2031-01-05", "2031-01-01"),
    "empty-range": ("2031-01-05", "2031-01-05"),
    "too-long": ("2031-01-01", "2033-01-01"),
    "february-30": ("2031-02-30", "2031-03-01"),
    "two-digit-year": ("31-01-01", "31-01-05"),
    "no-padding": ("2031-1-1", "2031-1-5"),
    "no-dashes": ("20310101", "20310105"),
    "datetime": ("2031-01-01T00:00:00", "2031-01-05T00:00:00"),
    "year-zero": ("0000-01-01", "0000-01-05"),
    "year-10000": ("9999-12-31", "10000-01-01"),
    "numbers": (20310101, 20310105),
    "empty": ("", ""),
    "nul": ("2031-01-01\x00", "2031-01-05"),
}


def test_bad_or_inverted_rental_dates_are_400(client, admin_headers, admin_conn, body_endpoints):
    body = body_endpoints[-1][2]
    for name, (start, end) in BAD_RENTAL_DATES.items():
        r = client.post("/api/rentals", json=body | {"start_date": start, "end_date": end}, headers=admin_headers)
        assert_error(r, 400, "validation_error", context=name)
    assert snapshot(admin_conn)[2] == 0


def test_dates_at_the_ends_of_the_calendar_are_served(client, admin_headers, body_endpoints):
    body = body_endpoints[-1][2]
    for start, end in (("0001-01-01", "0001-01-02"), ("9999-12-30", "9999-12-31")):
        r = client.post("/api/rentals", json=body | {"start_date": start, "end_date": end}, headers=admin_headers)
        assert r.status_code == 201, r.json
    for query in ("from=0001-01-01&to=0001-01-05", "from=9999-12-01", "to=0001-01-02"):
        r = client.get(f"/api/rentals?{query}", headers=admin_headers)
        assert r.status_code == 200, (query, r.json)
        assert len(r.json["items"]) == 1, query
    r = client.get("/api/products?available_from=0001-01-01&available_to=9999-12-31", headers=admin_headers)
    assert r.status_code == 200, r.json


def test_bad_or_inverted_date_filters_are_400(client, admin_headers):
    for query in [
        "/api/rentals?from=2031-01-05&to=2031-01-01",
        "/api/rentals?from=2031-01-05&to=2031-01-05",
        "/api/rentals?from=2031-13-01",
        "/api/rentals?to=yesterday",
        "/api/rentals?from=10000-01-01",
        "/api/products?available_from=2031-01-05&available_to=2031-01-01",
        "/api/products?available_from=2031-01-05",
        "/api/products?available_from=2031-02-30&available_to=2031-03-01",
    ]:
        assert_error(client.get(query, headers=admin_headers), 400, "validation_error", context=query)


# -- text --------------------------------------------------------------------------------

UNICODE_TEXT = [
    "Zoë Ødegård-Łukasz",
    "李小龙",
    "محمد بن سلمان",
    "😀👩‍👩‍👧‍👦🏳️‍🌈",
    "\u202eRTL override",
    "e\u0301 combining",
    "zero\u200bwidth",
    "\ufeffBOM",
    "\U0010ffff last code point",
    "tab\tnew\nline\r",
    "\x01\x1f control",
]


def test_unicode_text_is_stored_and_read_back_equal(client, admin_headers):
    for text in UNICODE_TEXT:
        r = client.post("/api/customers", json={"full_name": text, "notes": text}, headers=admin_headers)
        assert r.status_code == 201, (text, r.json)
        stored = client.get(f"/api/customers/{r.json['id']}", headers=admin_headers).json
        assert (stored["full_name"], stored["notes"]) == (text.strip(), text)


def test_nul_bytes_in_text_are_refused_with_400_and_write_nothing(client, admin_headers, admin_conn, world):
    cases = [
        ("POST", "/api/customers", {"full_name": "A\x00B"}, "full_name"),
        ("POST", "/api/customers", {"full_name": "A", "notes": "\x00"}, "notes"),
        ("POST", "/api/customers", {"full_name": "A", "email": "a\x00@example.com"}, "email"),
        ("POST", "/api/customers", {"full_name": "A", "phone": "555\x00"}, "phone"),
        ("PATCH", f"/api/customers/{world['customer']}", {"notes": "before\x00after"}, "notes"),
        ("POST", "/api/products", PRODUCT | {"name": "Cam\x00era"}, "name"),
        ("POST", "/api/products", PRODUCT | {"sku": "CAM\x00"}, "sku"),
        ("POST", "/api/products", PRODUCT | {"category": "cam\x00"}, "category"),
        ("PATCH", f"/api/products/{world['product']}", {"category": "\x00"}, "category"),
        ("POST", "/api/auth/login", {"email": "a\x00@example.com", "password": "x"}, "email"),
    ]
    before = snapshot(admin_conn)
    for method, path, body, field in cases:
        r = client.open(path, method=method, json=body, headers=admin_headers)
        error = assert_error(r, 400, "validation_error", context=(path, body))
        assert field in error["details"], error
    assert snapshot(admin_conn) == before
    # A password never reaches the database: one with a NUL is simply wrong.
    r = client.post("/api/auth/login", json={"email": "a@example.com", "password": "x\x00y"})
    assert_error(r, 401, "invalid_credentials")


def test_nul_bytes_and_invalid_utf8_in_query_strings_are_refused_cleanly(client, admin_headers):
    for query in [
        "/api/customers?q=a%00b",
        "/api/products?q=%00",
        "/api/products?category=tools%00",
        "/api/rentals?status=reserved%00",
        "/api/customers?cursor=%00",
        "/api/rentals?from=2031-01-01%00",
    ]:
        assert_error(client.get(query, headers=admin_headers), 400, "validation_error", context=query)
    r = client.get("/api/customers?q=%ff%fe%ed%a0%80", headers=admin_headers)
    assert r.status_code == 200, r.json


INJECTIONS = [
    "Robert'); DROP TABLE customers;--",
    "' OR '1'='1",
    '" OR ""="',
    "1; SELECT pg_sleep(10)",
    "%' UNION SELECT password_hash FROM users --",
    "\\'; COPY customers TO PROGRAM 'id'; --",
    "$$; DROP TABLE rentals; $$",
    "%_\\",
    "%",
]


def test_sql_injection_strings_are_stored_literally_and_read_back_equal(client, admin_headers, admin_conn):
    other = client.post("/api/customers", json={"full_name": "Someone Else"}, headers=admin_headers).json
    for n, text in enumerate(INJECTIONS):
        r = client.post("/api/customers", json={"full_name": text, "notes": text}, headers=admin_headers)
        assert r.status_code == 201, (text, r.json)
        customer = client.get(f"/api/customers/{r.json['id']}", headers=admin_headers).json
        assert (customer["full_name"], customer["notes"]) == (text, text)
        r = client.post(
            "/api/products", json=PRODUCT | {"sku": f"INJ-{n}", "name": text, "category": text}, headers=admin_headers
        )
        assert r.status_code == 201, (text, r.json)
        assert (r.json["name"], r.json["category"]) == (text, text)
        # Searching for the text finds that row only: no quote or wildcard escapes the pattern.
        found = client.get("/api/customers", query_string={"q": text}, headers=admin_headers)
        ids = [c["id"] for c in found.json["items"]]
        assert customer["id"] in ids and other["id"] not in ids, (text, found.json)
        found = client.get("/api/products", query_string={"category": text}, headers=admin_headers)
        assert [p["sku"] for p in found.json["items"]] == [f"INJ-{n}"], text
    assert snapshot(admin_conn)[:3] == (len(INJECTIONS) + 1, len(INJECTIONS), 0)


def test_sql_injection_in_login_is_just_wrong_credentials(client, staff_user):
    for email, password in [(staff_user["email"] + "' --", "x"), ("' OR 1=1 --", "' OR '1'='1")]:
        r = client.post("/api/auth/login", json={"email": email, "password": password})
        assert_error(r, 401, "invalid_credentials", context=email)


# -- path ids ----------------------------------------------------------------------------

ID_PATHS = [
    ("GET", "/api/customers/{}"),
    ("PATCH", "/api/customers/{}"),
    ("DELETE", "/api/customers/{}"),
    ("GET", "/api/products/{}"),
    ("PATCH", "/api/products/{}"),
    ("DELETE", "/api/products/{}"),
    ("GET", "/api/rentals/{}"),
    ("POST", "/api/rentals/{}/activate"),
    ("POST", "/api/rentals/{}/return"),
    ("POST", "/api/rentals/{}/cancel"),
]
# What each id gets: 400 when the route matched and the id is out of range, 404 when no
# route matches (Flask's int converter takes only digits) or the id is simply unknown.
BAD_IDS = {
    "0": 400,
    str(INT64_MAX + 1): 400,
    str(2**64): 400,
    "9" * 400: 400,
    "-1": 404,
    "1.5": 404,
    "abc": 404,
    "1e3": 404,
    "%00": 404,
    "%20": 404,
    "1%0a": 404,
    str(INT64_MAX): 404,
}


# The number one (eleven for the last) in digits other than ASCII's. Python's `\d` takes all
# but the superscript, and int() reads them, so werkzeug's int converter (`\d+`) did too;
# pydantic's integer parsing takes none of them.
UNICODE_ONES = {
    "arabic-indic": "\u0661",
    "extended-arabic-indic": "\u06f1",
    "devanagari": "\u0967",
    "bengali": "\u09e7",
    "thai": "\u0e51",
    "fullwidth": "\uff11",
    "mathematical-bold": "\U0001d7cf",
    "superscript": "\u00b9",
    "ascii-then-arabic-indic": "1\u0661",
}


def test_path_ids_out_of_range_are_400_or_404_and_write_nothing(client, admin_headers, admin_conn, world):
    before = snapshot(admin_conn)
    for method, path in ID_PATHS:
        body = {"notes": "x"} if "customers" in path else {"name": "x"} if method == "PATCH" else None
        for ident, status in BAD_IDS.items():
            r = client.open(path.format(ident), method=method, json=body, headers=admin_headers)
            assert_error(r, status, context=(method, path, ident[:20]))
    assert snapshot(admin_conn) == before


@pytest.mark.parametrize("one", UNICODE_ONES.values(), ids=UNICODE_ONES.keys())
def test_path_ids_in_other_digits_match_no_route(
    client, admin_headers, admin_conn, make_customer, make_product, make_rental, one
):
    # Customer, product and rental 1 exist: a route that matched would serve, change or
    # delete one of them (or answer 409), never 404.
    customer, product = make_customer(), make_product()
    rental = make_rental(customer, product, datetime.date(2031, 1, 1), datetime.date(2031, 1, 5))
    assert customer["id"] == product["id"] == rental["id"] == 1
    before = snapshot(admin_conn)
    for method, path in ID_PATHS:
        body = {"notes": "x"} if "customers" in path else {"name": "x"} if method == "PATCH" else None
        r = client.open(path.format(one), method=method, json=body, headers=admin_headers)
        error = assert_error(r, 404, "not_found", context=(method, path, one))
        assert error["details"] == {}, error
    assert snapshot(admin_conn) == before


# -- limit and cursor --------------------------------------------------------------------

BAD_LIMITS = ["0", "-1", "101", str(INT64_MAX + 1), "9" * 400, "1.5", "ten", "", "1e2", "%00"]
# Numbers pydantic's lax integer parsing reads as 1 (or 10): a query's numbers are ASCII digits only.
LOOSE_ONES = ["+1", "%201", "1%20", "1.0", "1_0", "%091"]


def test_bad_limits_are_400(client, admin_headers):
    for path in ("/api/customers", "/api/products", "/api/rentals"):
        for limit in BAD_LIMITS:
            r = client.get(f"{path}?limit={limit}", headers=admin_headers)
            error = assert_error(r, 400, "validation_error", context=(path, limit[:20]))
            assert "limit" in error["details"], error


@pytest.mark.parametrize("one", [*UNICODE_ONES.values(), *LOOSE_ONES], ids=[*UNICODE_ONES, *LOOSE_ONES])
def test_query_numbers_are_ascii_digits_only(client, admin_headers, make_customer, make_product, one):
    make_customer(), make_product()
    for path, name in [
        ("/api/customers", "limit"),
        ("/api/products", "limit"),
        ("/api/rentals", "limit"),
        ("/api/rentals", "customer_id"),
        ("/api/rentals", "product_id"),
    ]:
        r = client.get(f"{path}?{name}={quote(one, safe='%')}", headers=admin_headers)
        error = assert_error(r, 400, "validation_error", context=(path, name, one))
        assert list(error["details"]) == [name], error


def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


BAD_CURSORS = {
    "/api/customers": [
        "garbage",
        "!!!!",
        "a" * 501,
        "é",
        _cursor("customers"),
        _cursor(["customers"]),
        _cursor(["products", 1]),
        _cursor(["customers", "1"]),
        _cursor(["customers", 1.5]),
        _cursor(["customers", True]),
        _cursor(["customers", None]),
        _cursor(["customers", 2**63]),
        _cursor(["customers", -(2**63) - 1]),
        _cursor(["customers", 10**100]),
        _cursor(["customers", 1, 2]),
        _cursor({"customers": 1}),
        base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
        base64.urlsafe_b64encode(b'["customers", NaN]').decode(),
        base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode()[:500],
    ],
    "/api/products": [_cursor(["products", 2**64]), _cursor(["customers", 1]), "=" * 10],
    "/api/rentals": [
        _cursor(["rentals", "2031-01-01"]),
        _cursor(["rentals", "2031-02-30", 1]),
        _cursor(["rentals", "10000-01-01", 1]),
        _cursor(["rentals", 20310101, 1]),
        _cursor(["rentals", "2031-01-01", 2**63]),
        _cursor(["rentals", "2031-01-01", "1"]),
        _cursor(["rentals", "2031-01-01\x00", 1]),
    ],
}


def test_cursor_garbage_is_400(client, admin_headers):
    for path, cursors in BAD_CURSORS.items():
        for cursor in cursors:
            r = client.get(path, query_string={"cursor": cursor}, headers=admin_headers)
            error = assert_error(r, 400, "validation_error", context=(path, cursor[:60]))
            assert "cursor" in error["details"], error


def _raw_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("one", UNICODE_ONES.values(), ids=UNICODE_ONES.keys())
def test_cursors_with_other_digits_are_400(client, admin_headers, make_customer, one):
    make_customer()
    for path, cursor in [
        ("/api/customers", _raw_cursor(f'["customers",{one}]')),  # not a JSON number at all
        ("/api/customers", _cursor(["customers", one])),
        ("/api/products", _raw_cursor(f'["products",{one}]')),
        ("/api/rentals", _cursor(["rentals", f"2031-01-0{one}", 1])),
        ("/api/rentals", _raw_cursor(f'["rentals","2031-01-01",{one}]')),
    ]:
        r = client.get(path, query_string={"cursor": cursor}, headers=admin_headers)
        error = assert_error(r, 400, "validation_error", context=(path, cursor))
        assert list(error["details"]) == ["cursor"], error


@pytest.mark.parametrize("one", UNICODE_ONES.values(), ids=UNICODE_ONES.keys())
def test_dates_with_other_digits_are_400(client, admin_headers, world, one):
    date = f"2031-01-0{one}"
    r = client.get(f"/api/rentals?from={quote(date)}", headers=admin_headers)
    assert list(assert_error(r, 400, "validation_error", context=date)["details"]) == ["from"]
    body = {
        "customer_id": world["customer"],
        "product_id": world["product"],
        "start_date": date,
        "end_date": "2031-02-01",
    }
    r = client.post("/api/rentals", json=body, headers=admin_headers)
    assert list(assert_error(r, 400, "validation_error", context=date)["details"]) == ["start_date"]


def test_unknown_query_parameters_are_400(client, admin_headers):
    for path in ("/api/customers", "/api/products", "/api/rentals", "/api/dashboard", "/api/auth/me"):
        r = client.get(f"{path}?sort=id;DROP TABLE x", headers=admin_headers)
        if path in ("/api/dashboard", "/api/auth/me"):
            assert r.status_code == 200, (path, r.json)  # these take no parameters and ignore any
            continue
        error = assert_error(r, 400, "validation_error", context=path)
        assert "sort" in error["details"]
        # A parameter sent twice is refused, not half-read.
        r = client.get(f"{path}?limit=1&limit=2", headers=admin_headers)
        error = assert_error(r, 400, "validation_error", context=path)
        assert error["details"] == {"query": ["send each parameter once: limit"]}
