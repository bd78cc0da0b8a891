"""Auth: login, bearer tokens (missing, malformed, expired, tampered), roles, deactivation, users create."""

from __future__ import annotations

import base64
import datetime
import json
import time

import pytest
from itsdangerous import TimestampSigner

from apps.api.app import auth
from tests.helpers import HEALTH_HEADERS, HEALTH_TOKEN, app_config, bearer, login

pytestmark = pytest.mark.both_routes


def test_login_returns_a_token_its_expiry_and_the_user(client, admin_user):
    r = login(client, admin_user["email"].upper())
    assert r.status_code == 200, r.json
    assert set(r.json) == {"token", "token_type", "expires_at", "user"}
    assert r.json["token_type"] == "Bearer"
    expires = datetime.datetime.fromisoformat(r.json["expires_at"])
    assert abs((expires - datetime.datetime.now(datetime.UTC)).total_seconds() - 3600) < 5
    assert r.json["user"] == r.json["user"] | {"id": admin_user["id"], "role": "admin", "active": True}
    assert "password_hash" not in r.json["user"]
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {r.json['token']}"})
    assert me.status_code == 200
    assert me.json["email"] == admin_user["email"]


@pytest.mark.parametrize("who", ["wrong password", "unknown email"])
def test_login_with_bad_credentials_is_401_and_says_the_same_either_way(client, staff_user, who):
    if who == "wrong password":
        r = login(client, staff_user["email"], "not the password")
    else:
        r = login(client, "nobody@example.com")
    assert r.status_code == 401
    assert r.json["error"] == {
        "code": "invalid_credentials",
        "message": "the email or the password is wrong",
        "details": {},
    }


def test_login_of_a_deactivated_user_is_403(client, make_user):
    user = make_user("staff", active=False)
    r = login(client, user["email"])
    assert r.status_code == 403
    assert r.json["error"]["code"] == "account_disabled"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "email"),
        ({"email": "a@example.com"}, "password"),
        ({"email": 7, "password": "x"}, "email"),
        ({"email": "a@example.com", "password": ""}, "password"),
        ({"email": "a@example.com", "password": "x", "remember": True}, "remember"),
    ],
)
def test_login_rejects_bad_bodies(client, body, field):
    r = client.post("/api/auth/login", json=body)
    assert r.status_code == 400
    assert field in r.json["error"]["details"]


def test_login_rejects_malformed_json(client):
    r = client.post("/api/auth/login", data='{"email": ', content_type="application/json")
    assert r.status_code == 400
    assert r.json["error"]["code"] == "invalid_json"


def _expired_token(user: dict) -> str:
    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 3601

    return auth.token_serializer("test-secret-key", signer=PastSigner).dumps({"sub": user["id"], "role": user["role"]})


def _tamper_claims(token: str) -> str:
    payload, timestamp, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{forged}.{timestamp}.{signature}"


@pytest.mark.parametrize(
    ("make_header", "code"),
    [
        (lambda token, user: None, "unauthorized"),
        (lambda token, user: "", "unauthorized"),
        (lambda token, user: "Bearer", "unauthorized"),
        (lambda token, user: "Bearer ", "unauthorized"),
        (lambda token, user: f"Basic {token}", "unauthorized"),
        (lambda token, user: f"Token {token}", "unauthorized"),
        (lambda token, user: "Bearer not-a-token", "invalid_token"),
        (lambda token, user: f"Bearer {token[:-2]}xx", "invalid_token"),
        (lambda token, user: f"Bearer {_tamper_claims(token)}", "invalid_token"),
        (lambda token, user: f"Bearer {token}.extra", "invalid_token"),
        (lambda token, user: f"Bearer {_expired_token(user)}", "token_expired"),
        (
            lambda token, user: (
                "Bearer " + auth.token_serializer("another-secret").dumps({"sub": user["id"], "role": "staff"})
            ),
            "invalid_token",
        ),
        (lambda token, user: "Bearer " + auth.token_serializer("test-secret-key").dumps(["staff"]), "invalid_token"),
        (
            lambda token, user: (
                "Bearer " + auth.token_serializer("test-secret-key").dumps({"sub": "1", "role": "staff"})
            ),
            "invalid_token",
        ),
        (lambda token, user: f"Bearer {HEALTH_TOKEN}", "invalid_token"),
    ],
)
def test_bad_tokens_are_401(app, client, staff_user, make_header, code):
    token = bearer(app, staff_user)["Authorization"].removeprefix("Bearer ")
    header = make_header(token, staff_user)
    headers = {} if header is None else {"Authorization": header}
    r = client.get("/api/customers", headers=headers)
    assert r.status_code == 401, r.json
    assert r.json["error"]["code"] == code
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="rentals-api"'


def test_every_domain_endpoint_needs_a_token(client):
    paths = [
        ("GET", "/api/customers"),
        ("POST", "/api/customers"),
        ("GET", "/api/customers/1"),
        ("PATCH", "/api/customers/1"),
        ("DELETE", "/api/customers/1"),
        ("GET", "/api/products"),
        ("POST", "/api/products"),
        ("GET", "/api/products/1"),
        ("PATCH", "/api/products/1"),
        ("DELETE", "/api/products/1"),
        ("GET", "/api/rentals"),
        ("POST", "/api/rentals"),
        ("GET", "/api/rentals/1"),
        ("POST", "/api/rentals/1/activate"),
        ("POST", "/api/rentals/1/return"),
        ("POST", "/api/rentals/1/cancel"),
        ("GET", "/api/dashboard"),
        ("GET", "/api/auth/me"),
    ]
    for method, path in paths:
        assert client.open(path, method=method, json={}).status_code == 401, (method, path)


@pytest.mark.parametrize("path", ["/api/health/db", "/api/health/db/test"])
def test_health_accepts_an_admin_token_or_the_health_token_but_not_staff(app, client, admin_user, staff_user, path):
    assert client.get(path, headers=bearer(app, admin_user)).status_code == 200
    assert client.get(path, headers={"Authorization": f"Bearer {HEALTH_TOKEN}"}).status_code == 200
    r = client.get(path, headers=bearer(app, staff_user))
    assert r.status_code == 403
    assert r.json["error"]["code"] == "forbidden_role"
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(path).status_code == 401


def test_health_with_an_admin_token_and_no_database_is_503_and_the_health_token_still_works(make_app):
    # Nothing listens on port 1: the admin's token cannot be re-checked (active? still an
    # admin?), so it is refused with 503 rather than trusted on its signature alone.
    down = make_app(DATABASE_URL="postgresql://nobody:x@127.0.0.1:1/nothing", DB_CONNECT_TIMEOUT=1)
    client = down.test_client()
    r = client.get("/api/health/db", headers=bearer(down, {"id": 1, "role": "admin"}))
    assert r.status_code == 503
    assert r.json["error"]["code"] == "database_unavailable"
    assert r.headers["Retry-After"]
    r = client.get("/api/health/db", headers=HEALTH_HEADERS)
    assert r.status_code == 503
    assert r.json["status"] == "error"


def test_deactivated_users_token_stops_working_after_the_recheck_interval(app, client, staff_user, admin_conn):
    headers = bearer(app, staff_user)
    assert client.get("/api/customers", headers=headers).status_code == 200
    with admin_conn.cursor() as cur:
        cur.execute("UPDATE users SET active = false WHERE id = %s", (staff_user["id"],))
    # Within the interval this worker trusts its cached answer...
    assert client.get("/api/customers", headers=headers).status_code == 200
    # ...and once it has passed, it asks the database again.
    auth.state(app).user_recheck_seconds = 0
    r = client.get("/api/customers", headers=headers)
    assert r.status_code == 401
    assert r.json["error"]["code"] == "account_disabled"


def test_a_deleted_user_is_refused_and_a_demoted_admin_loses_admin_rights(
    app, client, admin_user, staff_user, make_customer, admin_conn
):
    auth.state(app).user_recheck_seconds = 0
    admin_headers, staff_headers = bearer(app, admin_user), bearer(app, staff_user)
    with admin_conn.cursor() as cur:
        cur.execute("UPDATE users SET role = 'staff' WHERE id = %s", (admin_user["id"],))
        cur.execute("DELETE FROM users WHERE id = %s", (staff_user["id"],))
    customer = make_customer()
    assert client.delete(f"/api/customers/{customer['id']}", headers=admin_headers).status_code == 403
    assert client.get("/api/customers", headers=staff_headers).status_code == 401


def test_users_create_reads_the_password_from_the_environment(app, client, monkeypatch):
    monkeypatch.setenv("NEW_USER_PASSWORD", "a long enough password")
    result = app.test_cli_runner().invoke(args=["users", "create", "--email", "Boss@Example.com", "--role", "admin"])
    assert result.exit_code == 0, result.output
    # The login is stored in its one normalised form (models/users.py, normalize_email).
    assert "created admin boss@example.com" in result.output
    r = login(client, "boss@example.com", "a long enough password")
    assert r.status_code == 200
    assert r.json["user"]["role"] == "admin"


def test_users_create_prompts_for_the_password_twice(app, client, monkeypatch):
    monkeypatch.delenv("NEW_USER_PASSWORD", raising=False)
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["users", "create", "--email", "clerk@example.com"], input="typed secret 1\ntyped secret 1\n"
    )
    assert result.exit_code == 0, result.output
    assert "typed secret" not in result.output
    assert login(client, "clerk@example.com", "typed secret 1").json["user"]["role"] == "staff"


@pytest.mark.parametrize(
    ("args", "password", "message"),
    [
        (["--email", "short@example.com"], "tiny", "at least 10 characters"),
        (["--email", "not-an-email"], "a long enough password", "not an email address"),
        (["--email", "x@example.com", "--role", "root"], "a long enough password", "Invalid value for '--role'"),
        (["--email", "ß" * 126 + "@e.co"], "a long enough password", "257 characters once normalised"),
        (["--email", "x@example.com", "--password", "p"], "a long enough password", "No such option"),
    ],
)
def test_users_create_refuses_bad_input(app, monkeypatch, args, password, message):
    monkeypatch.setenv("NEW_USER_PASSWORD", password)
    result = app.test_cli_runner().invoke(args=["users", "create", *args])
    assert result.exit_code != 0
    assert message in result.output


def test_users_create_refuses_a_taken_email_and_deactivate_locks_the_user_out(app, client, staff_user, monkeypatch):
    monkeypatch.setenv("NEW_USER_PASSWORD", "a long enough password")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "create", "--email", staff_user["email"].upper()])
    assert result.exit_code != 0
    assert "already exists" in result.output
    assert runner.invoke(args=["users", "deactivate", "--email", staff_user["email"]]).exit_code == 0
    assert login(client, staff_user["email"]).status_code == 403
    assert runner.invoke(args=["users", "activate", "--email", staff_user["email"]]).exit_code == 0
    assert login(client, staff_user["email"]).status_code == 200
    assert runner.invoke(args=["users", "deactivate", "--email", "ghost@example.com"]).exit_code != 0


def test_test_config_is_what_the_tokens_are_signed_with():
    # The expired and forged tokens above are made with this key.
    assert app_config("postgresql://x@y/z")["SECRET_KEY"] == "test-secret-key"
