"""Security: auth replies, constant-time compares, password hashing, login brute-force limits
(across gunicorn workers), secrets kept out of logs and replies, security headers, CORS, and a
database role without superuser rights."""

from __future__ import annotations

import collections
import contextlib
import hmac
import http.client
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
from werkzeug.security import check_password_hash

from apps.api.app import auth, create_app, migrate
from apps.api.app.config import ConfigError, load_settings
from apps.api.app.models import database, users
from tests.helpers import (
    HEALTH_HEADERS,
    HEALTH_TOKEN,
    TEST_PASSWORD,
    app_config,
    bearer,
    fullwidth,
    insert_row,
    login,
    private_server,
    upgrade_database,
    wait_until,
)
from tests.support.faults import lock_waiters, locked
from tests.support.gunicorn import start_gunicorn, stop_gunicorn
from tests.support.load import Burst, send, send_all

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# -- tokens and roles --------------------------------------------------------------------


def test_every_secured_operation_without_a_token_is_401_with_www_authenticate_bearer(client):
    doc = client.get("/api/openapi.json").json
    secured = [
        (method, path)
        for path, operations in doc["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    ]
    assert len(secured) >= 20
    for method, path in secured:
        r = client.open(re.sub(r"\{[^}]+\}", "1", path), method=method.upper(), json={})
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["WWW-Authenticate"].startswith("Bearer "), (method, path)
        assert r.json["error"]["code"] == "unauthorized"


def test_a_staff_token_on_admin_operations_is_403(app, client, staff_user, make_customer, make_product):
    headers = bearer(app, staff_user)
    customer, product = make_customer(), make_product()
    for path in (
        f"/api/customers/{customer['id']}",
        f"/api/products/{product['id']}",
    ):
        r = client.delete(path, headers=headers)
        assert r.status_code == 403, path
        assert r.json["error"]["code"] == "forbidden_role"
    for path in ("/api/health/db", "/api/health/system", "/metrics"):
        assert client.get(path, headers=headers).status_code == 403, path
    assert client.get(f"/api/customers/{customer['id']}", headers=headers).status_code == 200


HEALTH_PATHS = ("/api/health/db", "/api/health/db/test", "/api/health/system", "/metrics")


def test_a_deactivated_or_demoted_admin_loses_health_and_metrics_after_the_recheck_interval(
    app, client, make_user, admin_conn
):
    leaving, demoted = make_user("admin"), make_user("admin")
    leaving_headers, demoted_headers = bearer(app, leaving), bearer(app, demoted)
    for path in HEALTH_PATHS:
        assert client.get(path, headers=leaving_headers).status_code == 200, path
        assert client.get(path, headers=demoted_headers).status_code == 200, path
    with admin_conn.cursor() as cur:
        cur.execute("UPDATE users SET active = false WHERE id = %s", (leaving["id"],))
        cur.execute("UPDATE users SET role = 'staff' WHERE id = %s", (demoted["id"],))
    # Within the interval this worker trusts its cached answer, as for the domain endpoints...
    assert client.get("/api/health/system", headers=leaving_headers).status_code == 200
    # ...and once it has passed, it asks the database again.
    auth.state(app).user_recheck_seconds = 0
    for path in HEALTH_PATHS:
        r = client.get(path, headers=leaving_headers)
        assert r.status_code == 401, (path, r.status_code)
        assert r.json["error"]["code"] == "account_disabled"
        r = client.get(path, headers=demoted_headers)
        assert r.status_code == 403, (path, r.status_code)
        assert r.json["error"]["code"] == "forbidden_role"
        assert client.get(path, headers=HEALTH_HEADERS).status_code == 200, path


@pytest.mark.slow
def test_an_admin_token_on_health_while_the_database_is_stopped_uses_a_recent_answer_or_gets_503(password_hash):
    with private_server() as server:
        server.ensure_role_and_database("rentals", "rentals-test-pw", "rentals")
        url = server.dsn("rentals", user="rentals", password="rentals-test-pw")
        upgrade_database(url)
        with contextlib.closing(psycopg2.connect(url)) as conn:
            conn.autocommit = True
            admin = insert_row(
                conn, "users", email="ops@example.com", password_hash=password_hash, full_name="Ops", role="admin"
            )
        app = create_app(app_config(url, DB_CONNECT_TIMEOUT=1))
        try:
            client, headers = app.test_client(), bearer(app, admin)
            assert client.get("/api/health/system", headers=headers).status_code == 200
            server.stop()
            # Within the recheck interval the worker's recent answer stands...
            assert client.get("/api/health/system", headers=headers).status_code == 200
            # ...past it, with nobody to ask: 503 with Retry-After in the error shape, never 500.
            auth.state(app).user_recheck_seconds = 0
            for path in HEALTH_PATHS:
                r = client.get(path, headers=headers)
                assert r.status_code == 503, (path, r.status_code)
                assert r.json["error"]["code"] == "database_unavailable", path
                assert r.headers["Retry-After"] == "2"
            # HEALTH_API_TOKEN needs no database.
            assert client.get("/api/health/system", headers=HEALTH_HEADERS).status_code == 200
            assert client.get("/metrics", headers=HEALTH_HEADERS).status_code == 200
            r = client.get("/api/health/db", headers=HEALTH_HEADERS)
            assert r.status_code == 503
            assert r.json["status"] == "error"
        finally:
            database.close_pool(app)


def test_tokens_and_health_token_are_compared_in_constant_time(make_app, staff_user, monkeypatch):
    # Both checks must go through hmac.compare_digest: itsdangerous' signature check and
    # the health token comparison.
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((type(a).__name__, len(a)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    app = make_app()
    client = app.test_client()
    headers = bearer(app, staff_user)
    calls.clear()
    assert client.get("/api/customers", headers=headers).status_code == 200
    assert calls, "a user token was verified without hmac.compare_digest"
    calls.clear()
    assert client.get("/api/health/system", headers={"Authorization": f"Bearer {HEALTH_TOKEN}"}).status_code == 200
    assert calls, "the health token was compared without hmac.compare_digest"
    calls.clear()
    assert client.get("/api/health/system", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert calls


def test_passwords_are_hashed_with_salted_scrypt():
    first, second = auth.hash_password("s3cret-passw0rd"), auth.hash_password("s3cret-passw0rd")
    assert first.startswith("scrypt:") and second.startswith("scrypt:")
    assert first != second, "the same password hashed twice must differ (salt)"
    assert "s3cret-passw0rd" not in first
    assert check_password_hash(first, "s3cret-passw0rd")
    assert not check_password_hash(first, "s3cret-passw0rd ")


# -- login brute force ---------------------------------------------------------------------


def test_an_account_is_locked_after_n_failures_with_429_and_retry_after(make_app, staff_user):
    client = make_app(LOGIN_MAX_FAILURES_PER_ACCOUNT=3, LOGIN_FAILURE_WINDOW_SECONDS=600).test_client()
    for _ in range(3):
        assert login(client, staff_user["email"], "wrong").status_code == 401
    r = login(client, staff_user["email"], "wrong")
    assert r.status_code == 429
    assert set(r.json["error"]) == {"code", "message", "details"}
    assert r.json["error"]["code"] == "too_many_requests"
    assert 1 <= int(r.headers["Retry-After"]) <= 600
    # The right password is refused too, and so is the same email written differently.
    assert login(client, staff_user["email"], TEST_PASSWORD).status_code == 429
    assert login(client, f"  {staff_user['email'].upper()} ", TEST_PASSWORD).status_code == 429
    # Nor does sending the object as a JSON string (which the validation also accepts) get around it.
    quoted = json.dumps(json.dumps({"email": staff_user["email"], "password": TEST_PASSWORD}))
    assert client.post("/api/auth/login", data=quoted, content_type="application/json").status_code == 429
    # Another account from the same address is not locked.
    assert login(client, "someone@example.com", "wrong").status_code == 401


def test_failures_from_one_address_are_limited_whatever_the_account(make_app):
    client = make_app(LOGIN_MAX_FAILURES_PER_ADDRESS=4).test_client()
    for n in range(4):
        assert login(client, f"user{n}@example.com", "wrong").status_code == 401
    r = login(client, "user9@example.com", "wrong")
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1


def test_only_failed_logins_count(make_app, staff_user):
    client = make_app(LOGIN_MAX_FAILURES_PER_ACCOUNT=2, LOGIN_MAX_FAILURES_PER_ADDRESS=2).test_client()
    for _ in range(4):
        assert login(client, staff_user["email"], TEST_PASSWORD).status_code == 200
        assert client.post("/api/auth/login", json={"email": staff_user["email"]}).status_code == 400
        assert client.post("/api/auth/login", data="x", content_type="text/plain").status_code == 415
    assert login(client, staff_user["email"], "wrong").status_code == 401
    assert login(client, staff_user["email"], TEST_PASSWORD).status_code == 200


def test_the_limit_ends_with_its_window(make_app, staff_user):
    client = make_app(LOGIN_MAX_FAILURES_PER_ACCOUNT=1, LOGIN_FAILURE_WINDOW_SECONDS=1).test_client()
    assert login(client, staff_user["email"], "wrong").status_code == 401
    assert login(client, staff_user["email"], TEST_PASSWORD).status_code == 429
    time.sleep(1.1)
    assert login(client, staff_user["email"], TEST_PASSWORD).status_code == 200


def test_the_client_address_comes_from_trusted_proxies_only(make_app):
    # Without TRUSTED_PROXIES a forged X-Forwarded-For changes nothing.
    client = make_app(LOGIN_MAX_FAILURES_PER_ADDRESS=2).test_client()
    for n in range(2):
        assert login(client, f"a{n}@example.com", "x", **{"X-Forwarded-For": f"10.0.0.{n}"}).status_code == 401
    assert login(client, "a9@example.com", "x", **{"X-Forwarded-For": "10.0.0.9"}).status_code == 429
    # Behind one trusted proxy, each client address has its own count.
    client = make_app(LOGIN_MAX_FAILURES_PER_ADDRESS=2, TRUSTED_PROXIES=1).test_client()
    for n in range(2):
        assert login(client, f"b{n}@example.com", "x", **{"X-Forwarded-For": "203.0.113.7"}).status_code == 401
    assert login(client, "b9@example.com", "x", **{"X-Forwarded-For": "203.0.113.7"}).status_code == 429
    assert login(client, "b9@example.com", "x", **{"X-Forwarded-For": "198.51.100.1"}).status_code == 401


@pytest.mark.parametrize(
    ("spelling", "stored"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("  ada@example.com\u00a0", "ada@example.com"),
        ("Straße@example.com", "strasse@example.com"),
        ("\ufb01le@example.com", "file@example.com"),  # the ligature fi
        ("vİctim@example.com", "vi\u0307ctim@example.com"),  # not victim: the dotted I keeps its dot
        ("e\u0301cole@example.com", "\u00e9cole@example.com"),  # composed
    ],
)
def test_an_email_has_one_normalised_form(spelling, stored):
    assert users.normalize_email(spelling) == stored
    assert users.normalize_email(fullwidth(spelling)) == stored


def test_normalising_an_email_twice_changes_nothing():
    # Every code point of the planes that have letters (surrogates aside): a stored email
    # normalised again finds the same user.
    texts = [chr(code) for code in range(0x30000) if not 0xD800 <= code <= 0xDFFF]
    assert [t for t in texts if users.normalize_email(users.normalize_email(t)) != users.normalize_email(t)] == []


UTF8_LOCALE = "C.UTF-8"


def _user_on(url: str, password_hash: str, email: str) -> dict:
    """Insert an admin with TEST_PASSWORD into the database at `url`; return the row."""
    with contextlib.closing(psycopg2.connect(url)) as conn:
        conn.autocommit = True
        return insert_row(conn, "users", email=email, password_hash=password_hash, full_name="A", role="admin")


def test_an_email_spelled_another_way_gets_no_fresh_login_limit_on_a_utf8_database(make_database, password_hash):
    url = make_database(UTF8_LOCALE)
    upgrade_database(url)
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        # The audit's database: its lower() folds the dotted capital I into a plain i.
        cur.execute("SELECT lower('vİctim') = 'victim'")
        assert cur.fetchone() == (True,)
    _user_on(url, password_hash, "victim@example.com")
    app = create_app(app_config(url, LOGIN_MAX_FAILURES_PER_ACCOUNT=3))
    try:
        client = app.test_client()
        for _ in range(3):
            assert login(client, "victim@example.com", "wrong").status_code == 401
        # A spelling that only the database's lower() folds into the account reaches no account...
        for spelling in ("vİctim@example.com", "VİCTİM@EXAMPLE.COM", "victİm@example.com"):
            r = login(client, spelling, TEST_PASSWORD)
            assert r.status_code in (401, 429), (spelling, r.status_code)
        # ...and every spelling that is the account shares its limit.
        for spelling in (
            "victim@example.com",
            " VICTIM@Example.COM ",
            f"{fullwidth('victim')}@{fullwidth('example')}.com",
        ):
            assert login(client, spelling, TEST_PASSWORD).status_code == 429, spelling
    finally:
        database.close_pool(app)


@pytest.mark.parametrize("locale", [None, UTF8_LOCALE], ids=["C", "C.UTF-8"])
def test_user_emails_are_stored_normalised_and_found_in_any_spelling(make_database, monkeypatch, locale):
    url = make_database(locale)
    upgrade_database(url)
    app = create_app(app_config(url))
    try:
        monkeypatch.setenv("NEW_USER_PASSWORD", TEST_PASSWORD)
        runner = app.test_cli_runner()
        result = runner.invoke(args=["users", "create", "--email", "Élodie.Straße@Example.com", "--role", "admin"])
        assert result.exit_code == 0, result.output
        assert "created admin élodie.strasse@example.com" in result.output
        result = runner.invoke(args=["users", "create", "--email", "ÉLODIE.STRASSE@EXAMPLE.COM"])
        assert result.exit_code != 0
        assert "already exists" in result.output
        client = app.test_client()
        for spelling in (
            "élodie.strasse@example.com",
            "ÉLODIE.STRASSE@example.com",
            f"élodie.{fullwidth('stra')}ß{fullwidth('e')}@example.com",
        ):
            r = login(client, spelling)
            assert r.status_code == 200, (spelling, r.json)
            assert r.json["user"]["email"] == "élodie.strasse@example.com"
        assert runner.invoke(args=["users", "deactivate", "--email", "Élodie.STRASSE@example.com"]).exit_code == 0
        assert login(client, "élodie.strasse@example.com").status_code == 403
    finally:
        database.close_pool(app)


def test_a_broken_limiter_store_never_turns_logins_into_500s(app, client, staff_user, admin_conn, caplog):
    with admin_conn.cursor() as cur:
        cur.execute("DROP TABLE rate_limits")
    assert login(client, staff_user["email"], "wrong").status_code == 401
    assert login(client, staff_user["email"], TEST_PASSWORD).status_code == 200
    assert "rate limit store unavailable, counting nothing: UndefinedTable 42P01" in caplog.text


def test_a_login_the_limiter_cannot_count_is_503_and_its_password_is_not_checked(make_app, staff_user, database_url):
    # A limiter that let logins through whenever it could not count would let a burst past
    # it whenever the database is slow; the login answers 503 instead, as at its user lookup.
    client = make_app(DB_LOCK_TIMEOUT_MS=200).test_client()
    with locked(database_url, "rate_limits"):
        r = login(client, staff_user["email"], TEST_PASSWORD)
    assert r.status_code == 503, r.json
    assert r.json["error"]["code"] == "query_timeout"
    assert r.headers["Retry-After"]
    assert login(client, staff_user["email"], TEST_PASSWORD).status_code == 200


def test_logins_while_the_database_is_down_are_503_not_500(make_app, staff_user):
    from devtools.embedded_pg import free_port

    app = make_app(DATABASE_URL=f"postgresql://nobody:pw@127.0.0.1:{free_port()}/none", DB_CONNECT_TIMEOUT=1)
    r = login(app.test_client(), staff_user["email"], TEST_PASSWORD)
    assert r.status_code == 503, r.json
    assert r.headers["Retry-After"]


def wait_for_workers(port: int, count: int, timeout: float = 15) -> set[int]:
    """Ask /api/health on fresh connections until `count` different worker pids have answered."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < count and time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/api/health")
            pids.add(json.loads(conn.getresponse().read())["pid"])
        finally:
            conn.close()
    assert len(pids) == count, f"only workers {pids} answered"
    return pids


@pytest.mark.slow
def test_the_login_limit_holds_across_two_gunicorn_workers(database_url, staff_user):
    limit = 6
    process, port = start_gunicorn(database_url, LOGIN_MAX_FAILURES_PER_ACCOUNT=limit, WEB_CONCURRENCY=2)
    try:
        wait_for_workers(port, 2)

        def attempt(password: str) -> int:
            # A fresh connection each time, so either worker may take it.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                body = json.dumps({"email": staff_user["email"], "password": password})
                conn.request("POST", "/api/auth/login", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                return response.status
            finally:
                conn.close()

        with ThreadPoolExecutor(limit) as pool:
            first = list(pool.map(attempt, ["wrong"] * limit))
        with ThreadPoolExecutor(4) as pool:
            then = list(pool.map(attempt, ["wrong"] * 8 + [TEST_PASSWORD] * 4))
    finally:
        output = stop_gunicorn(process)
    assert first == [401] * limit
    assert then == [429] * 12
    # A worker that had itself answered fewer than `limit` failures refused with 429: it
    # counted the other worker's failures too (a count per worker would have let it try).
    failures = collections.Counter(re.findall(r"\[(\d+)\] apps\.api\.request: POST /api/auth/login 401", output))
    refusing = set(re.findall(r"\[(\d+)\] apps\.api\.request: POST /api/auth/login 429", output))
    assert any(failures[pid] < limit for pid in refusing), (failures, refusing)


BURST = 50
# make run's shape: 2 workers x 8 threads, so 16 logins are checked at once; the address
# limit out of the way, so only the account's limit is at work.
BURST_SERVER = {
    "WEB_CONCURRENCY": 2,
    "GUNICORN_THREADS": 8,
    "DB_POOL_MAX_CONNECTIONS": 8,
    "LOGIN_MAX_FAILURES_PER_ADDRESS": 1000,
}


def login_request(email: str, password: str) -> tuple[str, str, dict, dict, str]:
    """Return one POST /api/auth/login in the shape send_all takes."""
    return ("POST", "/api/auth/login", {}, {"email": email, "password": password}, "login")


@pytest.mark.slow
def test_50_parallel_wrong_logins_check_at_most_the_limit_across_two_workers(database_url, staff_user):
    limit = 5
    process, port = start_gunicorn(database_url, LOGIN_MAX_FAILURES_PER_ACCOUNT=limit, **BURST_SERVER)
    try:
        replies = send_all(port, [login_request(staff_user["email"], "wrong")] * BURST)
        right = send(port, "POST", "/api/auth/login", {}, {"email": staff_user["email"], "password": TEST_PASSWORD})
    finally:
        output = stop_gunicorn(process)
    statuses = collections.Counter(r.status for r in replies)
    assert statuses == {401: limit, 429: BURST - limit}, statuses
    for reply in replies:
        if reply.status == 429:
            assert reply.code == "too_many_requests"
            assert 1 <= int(reply.retry_after) <= 900
    assert right.status == 429, "the right password got past a limit the burst had reached"
    answering = set(re.findall(r"\[(\d+)\] apps\.api\.request: POST /api/auth/login", output))
    assert len(answering) == 2, "both workers should have answered part of the burst"


@pytest.mark.slow
def test_the_right_password_is_refused_while_the_limit_is_taken_by_logins_in_flight(
    database_url, staff_user, admin_conn
):
    # Another session locks the users table, so logins that got past the limiter wait for
    # the user lookup, with the password not yet checked: the limit must already count them.
    limit = 3
    email = staff_user["email"]
    process, port = start_gunicorn(database_url, LOGIN_MAX_FAILURES_PER_ACCOUNT=limit, **BURST_SERVER)
    try:
        with locked(database_url, "users"):
            first = Burst(port, [login_request(email, "wrong")] * limit)
            assert wait_until(lambda: len(lock_waiters(admin_conn)) >= limit, timeout=10)
            second = Burst(port, [login_request(email, TEST_PASSWORD)] * 5 + [login_request(email, "wrong")] * 5)
            # Refused logins answer at once; a login that got past the limiter waits here.
            wait_until(lambda: len(lock_waiters(admin_conn)) > limit, timeout=1.5)
        first_replies, second_replies = first.result(), second.result()
    finally:
        stop_gunicorn(process)
    assert [r.status for r in first_replies] == [401] * limit
    assert [r.status for r in second_replies] == [429] * 10, [r.status for r in second_replies]


# -- secrets in logs and replies -----------------------------------------------------------


@pytest.mark.slow
def test_tokens_passwords_and_database_credentials_never_reach_logs_or_replies(
    database_url, admin_user, staff_user, pg_server
):
    from devtools.embedded_pg import free_port

    secret_password = "Sup3r-Secret-Passw0rd-" + uuid.uuid4().hex
    db_password = pg_server.password
    replies: list[str] = []

    def call(port: int, method: str, path: str, body: object = None, token: str | None = None) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = conn.getresponse()
            text = response.read().decode()
            replies.append(f"{response.status} {response.getheaders()} {text}")
            return json.loads(text) if text.startswith("{") else {}
        finally:
            conn.close()

    # One worker each: start_gunicorn waits for a worker to answer, and a worker still
    # booting when SIGTERM comes holds the stop for gunicorn's graceful timeout.
    # A healthy server: logins right and wrong, requests with the token, a few errors.
    process, port = start_gunicorn(database_url, LOG_LEVEL="debug", WEB_CONCURRENCY=1)
    try:
        token = call(port, "POST", "/api/auth/login", {"email": admin_user["email"], "password": TEST_PASSWORD})[
            "token"
        ]
        call(port, "POST", "/api/auth/login", {"email": staff_user["email"], "password": secret_password})
        call(port, "POST", "/api/auth/login", {"email": "nobody@example.com", "password": secret_password})
        call(port, "GET", f"/api/customers?q={secret_password}", token=token)
        call(port, "POST", "/api/customers", {"full_name": "A", "nickname": secret_password}, token=token)
        call(port, "GET", "/api/customers/1", token=token + "x")
        call(port, "GET", "/api/health/db", token=HEALTH_TOKEN)
        call(port, "GET", "/metrics", token=HEALTH_TOKEN)
    finally:
        output = stop_gunicorn(process)
    # A server whose database refuses its password, then one whose database is unreachable.
    bad_password = "Wr0ng-Db-Passw0rd-" + uuid.uuid4().hex
    failing = [
        re.sub(r"://([^:]+):[^@]+@", rf"://\1:{bad_password}@", database_url),
        f"postgresql://rentals:{bad_password}@127.0.0.1:{free_port()}/rentals",
    ]
    for url in failing:
        process, port = start_gunicorn(url, LOG_LEVEL="debug", DB_CONNECT_TIMEOUT=1, WEB_CONCURRENCY=1)
        try:
            call(port, "POST", "/api/auth/login", {"email": admin_user["email"], "password": secret_password})
            call(port, "GET", "/api/customers", token=token)
            call(port, "GET", "/api/health/db", token=HEALTH_TOKEN)
            call(port, "GET", "/api/health/db/test", token=HEALTH_TOKEN)
        finally:
            output += stop_gunicorn(process)
    assert "503" in " ".join(replies[-4:]), replies[-4:]
    assert "cannot connect" in output or "password authentication failed" in output, output[-2000:]
    secrets = {
        "user token": token,
        "a password": secret_password,
        "the database password": db_password,
        "a wrong database password": bad_password,
        "the health token": HEALTH_TOKEN,
        "the secret key": "test-secret-key",
    }
    for what, value in secrets.items():
        assert value not in output, f"{what} appears in the server's log"
    for reply in replies[1:]:  # the first is the login that hands out the token
        for what, value in secrets.items():
            assert value not in reply, f"{what} appears in a reply: {reply[:300]}"


def test_a_bad_database_url_in_a_config_error_hides_the_password():
    with pytest.raises(ConfigError) as caught:
        load_settings(app_config("mysql://rentals:Hidden-Pw-123@db/rentals"))
    assert "Hidden-Pw-123" not in str(caught.value)


# -- headers and CORS ----------------------------------------------------------------------


def _replies(client, headers: dict[str, str]):
    """One reply of each kind: 200, 201, 204, 400, 401, 403, 404, 405, 413, 415, text, 500."""
    yield client.get("/api/health")
    yield client.get("/api/openapi.json")
    yield client.get("/metrics", headers={"Authorization": f"Bearer {HEALTH_TOKEN}"})
    created = client.post("/api/customers", json={"full_name": "A"}, headers=headers)
    yield created
    yield client.delete(f"/api/customers/{created.json['id']}", headers=headers)
    yield client.get("/api/customers?limit=0", headers=headers)
    yield client.get("/api/customers")
    yield client.get("/api/health/db", headers={"Authorization": "Bearer x"})
    yield client.get("/api/nowhere")
    yield client.put("/api/customers", headers=headers)
    yield client.post("/api/customers", data="x" * 2_000_000, content_type="application/json", headers=headers)
    yield client.post("/api/customers", data="x", content_type="text/plain", headers=headers)
    yield client.get("/boom")


@pytest.fixture
def boom(app):
    """A route that fails with an unexpected error, registered by the test only."""

    def fail():
        raise RuntimeError("boom")

    app.add_url_rule("/boom", "boom", fail)


def test_every_reply_carries_the_security_headers(app, client, admin_headers, boom):
    statuses = set()
    for r in _replies(client, admin_headers):
        statuses.add(r.status_code)
        for name, value in SECURITY_HEADERS.items():
            assert r.headers.get(name) == value, (r.status_code, r.request.path, name)
        assert r.headers.getlist("Cache-Control") == ["no-store"]
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert "Strict-Transport-Security" not in r.headers
        assert "Access-Control-Allow-Origin" not in r.headers
    assert statuses == {200, 201, 204, 400, 401, 404, 405, 413, 415, 500}


def test_hsts_when_configured(make_app):
    r = make_app(HSTS_MAX_AGE=31536000).test_client().get("/api/health")
    assert r.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_cors_is_off_by_default(client, admin_headers):
    origin = {"Origin": "https://evil.example"}
    r = client.get("/api/customers", headers=admin_headers | origin)
    assert r.status_code == 200
    assert not [name for name, _ in r.headers if name.startswith("Access-Control-")]
    preflight = client.options("/api/customers", headers=origin | {"Access-Control-Request-Method": "POST"})
    assert not [name for name, _ in preflight.headers if name.startswith("Access-Control-")]


def test_cors_allows_only_the_configured_origins(make_app, admin_user):
    app = make_app(CORS_ORIGINS="https://app.example.com, https://admin.example.com/")
    client, headers = app.test_client(), bearer(app, admin_user)
    r = client.get("/api/customers", headers=headers | {"Origin": "https://app.example.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Origin" in r.headers["Vary"]
    assert "Retry-After" in r.headers["Access-Control-Expose-Headers"]
    # A browser script reads a write's consistency token and sends it back (README, Read replicas).
    assert "X-Consistency-Token" in r.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in r.headers
    r = client.get("/api/customers", headers=headers | {"Origin": "https://admin.example.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://admin.example.com"
    for origin in ("https://evil.example", "https://app.example.com.evil.example", "null", "http://app.example.com"):
        r = client.get("/api/customers", headers=headers | {"Origin": origin})
        assert "Access-Control-Allow-Origin" not in r.headers, origin
    # A preflight needs no token and is answered before authentication.
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "PATCH"}
    r = client.options("/api/customers/1", headers=preflight | {"Access-Control-Request-Headers": "authorization"})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "PATCH" in r.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "X-Consistency-Token" in r.headers["Access-Control-Allow-Headers"]
    assert r.headers["X-Frame-Options"] == "DENY"
    r = client.options("/api/customers/1", headers=preflight | {"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_with_credentials_names_the_origin_never_star(make_app):
    client = make_app(CORS_ORIGINS="https://app.example.com", CORS_ALLOW_CREDENTIALS="true").test_client()
    r = client.get("/api/health", headers={"Origin": "https://app.example.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    client = make_app(CORS_ORIGINS="*").test_client()
    r = client.get("/api/health", headers={"Origin": "https://any.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers


@pytest.mark.parametrize(
    ("settings", "sentence"),
    [
        ({"CORS_ORIGINS": "*", "CORS_ALLOW_CREDENTIALS": "true"}, "CORS_ALLOW_CREDENTIALS=true with CORS_ORIGINS=*"),
        ({"CORS_ORIGINS": "https://a.example/path"}, "not an origin"),
        ({"CORS_ORIGINS": "app.example.com"}, "not an origin"),
        ({"CORS_ORIGINS": "*, https://a.example"}, "not both"),
        ({"CORS_ALLOW_CREDENTIALS": "maybe"}, "CORS_ALLOW_CREDENTIALS must be true or false"),
        ({"LOGIN_MAX_FAILURES_PER_ACCOUNT": "0"}, "LOGIN_MAX_FAILURES_PER_ACCOUNT must be at least 1"),
        ({"TRUSTED_PROXIES": "-1"}, "TRUSTED_PROXIES must be at least 0"),
    ],
)
def test_unsafe_or_malformed_security_settings_are_refused(settings, sentence):
    with pytest.raises(ConfigError, match=re.escape(sentence)):
        load_settings(app_config("postgresql://u:p@h/d", **settings))


# -- a database role without superuser rights ----------------------------------------------


@contextlib.contextmanager
def _role_and_database(admin_conn, prefix: str):
    """Create a LOGIN role (no superuser, no createdb, no createrole) owning a new database; drop both after."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with admin_conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s", (password,))
        cur.execute(f"CREATE DATABASE {name} OWNER {name}")
    try:
        yield name, password
    finally:
        with admin_conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cur.execute(f"DROP ROLE IF EXISTS {name}_runtime")
            cur.execute(f"DROP ROLE IF EXISTS {name}")


def test_the_app_migrates_and_serves_as_a_role_without_superuser_rights(admin_conn, pg_server, monkeypatch):
    with _role_and_database(admin_conn, "rentals_owner") as (owner, password):
        owner_url = f"postgresql://{owner}:{password}@{pg_server.host}:{pg_server.port}/{owner}"
        # The owner applies the migrations (trusted extensions included)...
        app = create_app(app_config(owner_url))
        try:
            with app.app_context():
                assert migrate.upgrade() == [m.version for m in migrate.discover()]
                is_super = database.execute_query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                assert is_super == {"rolsuper": False}
            monkeypatch.setenv("NEW_USER_PASSWORD", TEST_PASSWORD)
            result = app.test_cli_runner().invoke(
                args=["users", "create", "--email", "ops@example.com", "--role", "admin", "--full-name", "Ops"]
            )
            assert result.exit_code == 0, result.output
        finally:
            database.close_pool(app)
        # ...and a second role with only the README's grants runs the app.
        runtime = f"{owner}_runtime"
        runtime_password = uuid.uuid4().hex
        with admin_conn.cursor() as cur:
            cur.execute(
                f"CREATE ROLE {runtime} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s", (runtime_password,)
            )
        with psycopg2.connect(owner_url) as conn, conn.cursor() as cur:
            cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {runtime}")
            cur.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {runtime}")
        conn.close()
        runtime_url = f"postgresql://{runtime}:{runtime_password}@{pg_server.host}:{pg_server.port}/{owner}"
        app = create_app(app_config(runtime_url))
        try:
            client = app.test_client()
            assert login(client, "ops@example.com", "wrong").status_code == 401
            token = login(client, "ops@example.com", TEST_PASSWORD).json["token"]
            headers = {"Authorization": f"Bearer {token}"}
            customer = client.post("/api/customers", json={"full_name": "Ada"}, headers=headers)
            assert customer.status_code == 201, customer.json
            product = client.post(
                "/api/products",
                json={"sku": "P-1", "name": "Drill", "category": "tools", "daily_rate_cents": 900},
                headers=headers,
            )
            assert product.status_code == 201, product.json
            booking = {"customer_id": customer.json["id"], "product_id": product.json["id"]}
            booking |= {"start_date": "2031-01-01", "end_date": "2031-01-03"}
            assert client.post("/api/rentals", json=booking, headers=headers).status_code == 201
            assert client.get("/api/rentals", headers=headers).status_code == 200
            assert client.get("/api/dashboard", headers=headers).status_code == 200
            assert client.get("/api/health/db", headers={"Authorization": f"Bearer {HEALTH_TOKEN}"}).status_code == 200
            assert client.delete(f"/api/customers/{customer.json['id']}", headers=headers).status_code == 409
        finally:
            database.close_pool(app)
