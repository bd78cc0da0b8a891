"""One deadline per request: DB_REQUEST_BUDGET_MS caps its waits for a connection and its statements together."""

from __future__ import annotations

import time

import pytest

from apps.api.app.context import RequestState, current_request
from apps.api.app.models.database import BudgetExhausted, execute_query_one, pool_stats
from tests.helpers import bearer, give_back, hold
from tests.support.faults import locked


def test_a_request_whose_budget_runs_out_waiting_for_a_connection_gets_503(make_app, make_user, make_customer):
    # The pool would let it wait 5 s; the budget lets it wait 0.4 s.
    app = make_app(DB_REQUEST_BUDGET_MS=400, DB_POOL_TIMEOUT=5, DB_POOL_MAX_CONNECTIONS=1, GUNICORN_THREADS=1)
    headers, customer = bearer(app, make_user("staff")), make_customer()
    pool, held = hold(app, 1)
    try:
        started = time.monotonic()
        r = app.test_client().get(f"/api/customers/{customer['id']}", headers=headers)
        waited = time.monotonic() - started
    finally:
        give_back(pool, held)
    assert r.status_code == 503
    assert r.json["error"]["code"] == "database_timeout"
    assert r.headers["Retry-After"] == "2"
    assert waited < 2.5, f"waited {waited:.2f} s: the pool timeout, not the budget, ended the wait"
    assert app.test_client().get(f"/api/customers/{customer['id']}", headers=headers).status_code == 200


def test_a_statement_that_outlives_the_budget_is_cancelled_at_it_and_the_connection_stays(
    make_app, make_user, make_customer, database_url
):
    # The lock wait would last 10 s and the statement timeout is 15 s; the budget is 0.6 s.
    app = make_app(DB_REQUEST_BUDGET_MS=600, DB_LOCK_TIMEOUT_MS=10_000)
    headers, customer = bearer(app, make_user("staff")), make_customer()
    client = app.test_client()
    assert client.get(f"/api/customers/{customer['id']}", headers=headers).status_code == 200  # user check cached
    with locked(database_url, "customers"):
        started = time.monotonic()
        r = client.get(f"/api/customers/{customer['id']}", headers=headers)
        waited = time.monotonic() - started
    assert r.status_code == 503
    assert r.json["error"]["code"] == "query_timeout"
    assert waited < 3, f"the statement ran {waited:.2f} s: it was not cut at the budget"
    # The server cancelled the statement; the connection went back healthy and serves again.
    assert client.get(f"/api/customers/{customer['id']}", headers=headers).status_code == 200
    stats = pool_stats(app)
    assert stats["discarded"] == 0
    assert stats["in_use"] == 0


def test_a_spent_budget_refuses_the_next_statement_with_503(make_app):
    app = make_app(DB_REQUEST_BUDGET_MS=1000)
    state = RequestState({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, "budget-test")
    state.db_deadline = time.monotonic() - 0.001
    token = current_request.set(state)
    try:
        with app.app_context(), pytest.raises(BudgetExhausted, match="DB_REQUEST_BUDGET_MS"):
            execute_query_one("SELECT 1")
    finally:
        current_request.reset(token)
    with app.test_request_context():
        response = app.handle_user_exception(BudgetExhausted("spent"))
    assert response.status_code == 503
    assert response.json["error"]["code"] == "database_budget_exhausted"
    assert response.headers["Retry-After"] == "2"


def test_outside_a_request_nothing_is_budgeted(make_app):
    # CLI commands, migrations and the pool's own maintenance have no request to bound.
    app = make_app(DB_REQUEST_BUDGET_MS=1)
    with app.app_context():
        assert execute_query_one("SELECT pg_sleep(0.05), 1 AS one")["one"] == 1
