"""Two API hosts through one PgBouncer: two gunicorn masters, as two machines would run them.

Each host is `gunicorn -c gunicorn.conf.py` with API_HOSTS=2 and DB_POOLER=pgbouncer, on its
own port with its own metrics folder; both reach the same database through one real
PgBouncer in transaction mode. What one host does, the other sees: tokens, the login limit,
and the capacity arithmetic that counts both.
"""

from __future__ import annotations

import pytest

from tests.helpers import TEST_PASSWORD, apply_role_timeouts, through, wait_until
from tests.support.gunicorn import POOL_MAX, WORKERS, get_json, start_gunicorn, stop_gunicorn
from tests.support.load import send

pytestmark = [pytest.mark.pgbouncer, pytest.mark.slow]

HOSTS = 2
MAX_FAILURES = 4


@pytest.fixture
def two_hosts(make_pgbouncer, direct_database_url):
    """Start two API hosts through one PgBouncer; yield (their ports, the PgBouncer); stop both after."""
    apply_role_timeouts(direct_database_url)
    bouncer = make_pgbouncer(max_client_conn=40)
    settings = {
        "API_HOSTS": HOSTS,
        "DB_POOLER": "pgbouncer",
        "PGBOUNCER_ADMIN_URL": bouncer.admin_dsn(),
        "LOGIN_MAX_FAILURES_PER_ACCOUNT": MAX_FAILURES,
    }
    url = through(bouncer, direct_database_url)
    processes, ports = [], []
    try:
        for _ in range(HOSTS):
            process, port = start_gunicorn(url, **settings)
            processes.append(process)
            ports.append(port)
        yield ports, bouncer
    finally:
        for process in processes:
            stop_gunicorn(process)


def login(port: int, email: str, password: str):
    """POST /api/auth/login to one host; return the Reply."""
    return send(port, "POST", "/api/auth/login", {}, {"email": email, "password": password}, kind="login")


def test_two_hosts_share_tokens_the_login_limit_and_the_capacity_arithmetic(two_hosts, staff_user):
    (first, second), bouncer = two_hosts
    # A token issued by one host is accepted by the other (which re-checks the user through PgBouncer).
    issued = login(first, staff_user["email"], TEST_PASSWORD)
    assert issued.status == 200, issued
    headers = {"Authorization": f"Bearer {issued.body['token']}"}
    me = send(second, "GET", "/api/auth/me", headers)
    assert (me.status, me.body["id"]) == (200, staff_user["id"])
    assert send(second, "GET", "/api/customers?limit=1", headers).status == 200

    # Failures split across the hosts count against one limit, in the database they share.
    for port in (first, second) * (MAX_FAILURES // 2):
        assert login(port, staff_user["email"], "wrong password").status == 401
    for port in (first, second):
        refused = login(port, staff_user["email"], TEST_PASSWORD)
        assert (refused.status, refused.code) == (429, "too_many_requests"), refused
        assert refused.retry_after

    # Either host counts both in its arithmetic: 2 hosts x 2 workers x 4 connections.
    total = HOSTS * WORKERS * POOL_MAX
    for port in (first, second):
        status, body = get_json(port, "/api/health/db")
        assert status == 200, body
        current = body["recommendations"]["current"]
        assert (current["hosts"], current["total_max_connections"]) == (HOSTS, total)
        capacity = body["pooler"]["capacity"]
        assert (capacity["client_connections"], capacity["max_client_conn"], capacity["clients_fit"]) == (
            total,
            40,
            True,
        )

    # PgBouncer sees both hosts' pools: each worker keeps one connection open (DB_POOL_MIN_CONNECTIONS 1).
    def clients_of_both_hosts() -> dict:
        body = get_json(first, "/api/health/db")[1]
        return body if body["pooler"]["pool"]["cl_active"] >= HOSTS * WORKERS else None

    assert wait_until(clients_of_both_hosts, timeout=5, interval=0.2), bouncer.pools()
