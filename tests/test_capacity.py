"""The capacity arithmetic behind PgBouncer (apps/api/app/capacity.py): pure functions, several shapes.

Two sides: hosts x workers x DB_POOL_MAX_CONNECTIONS against PgBouncer's max_client_conn, and
PgBouncer's pools ((pool_size + reserve_pool) x pools, capped by max_db_connections) against
the server's max_connections less its reserved connections. The README's 10-host example
is the first case.
"""

from __future__ import annotations

import pytest

from apps.api.app.capacity import Budget, PoolerLimits, pooled_capacity, pooled_problems, recommendations
from apps.api.app.config import load_settings
from apps.api.app.pool import ConnectionPool
from tests.helpers import app_config


def settings(url: str = "postgresql://rentals@pooler:6432/rentals", **overrides: object):
    """Return test settings behind PgBouncer (2 workers x 4 threads x 4 connections) with these changes."""
    shape = {"DB_POOLER": "pgbouncer", "GUNICORN_THREADS": 4, "DB_POOL_MAX_CONNECTIONS": 4}
    return load_settings(app_config(url, **{**shape, **overrides}), {})


def limits(**changes: object) -> dict[str, object]:
    """Return pgbouncer.read_figures()'s `limits`: the README's PgBouncer, with changes."""
    return {
        "pool_size": 60,
        "reserve_pool": 10,
        "max_client_conn": 400,
        "max_db_connections": 0,
        "query_wait_timeout_seconds": 10,
        "pools": 1,
        "databases": 1,
        **changes,
    }


TEN_HOSTS = {"API_HOSTS": 10, "WEB_CONCURRENCY": 4, "GUNICORN_THREADS": 8, "DB_POOL_MAX_CONNECTIONS": 8}


def test_the_readmes_ten_hosts_fit_pgbouncer_and_the_server():
    # 10 hosts x 4 workers x 8 = 320 clients of max_client_conn 400; (60 + 10) x 1 pool = 70 of 100 less 3.
    budget = Budget(hosts=10, workers=4, threads=8, pool_max=8, pooled=True)
    figures = pooled_capacity(budget, PoolerLimits(400, 60, 10), 100, 3)
    assert figures == {
        "client_connections": 320,
        "max_client_conn": 400,
        "clients_fit": True,
        "pooler_server_connections": 70,
        "server_usable_connections": 97,
        "servers_fit": True,
        "fits": True,
    }
    assert budget.fits(97) is None, "behind a pooler the app's total is not measured against the server"
    assert pooled_problems(settings(**TEN_HOSTS), limits(), 100, 3) == []


def test_ten_hosts_against_pgbouncers_default_max_client_conn_say_what_to_raise():
    (problem,) = pooled_problems(settings(**TEN_HOSTS), limits(max_client_conn=100), 100, 3)
    assert problem == (
        "10 hosts x 4 workers x 8 (DB_POOL_MAX_CONNECTIONS) = 320 client connections, but PgBouncer's"
        " max_client_conn is 100; raise max_client_conn to at least 320 plus PgBouncer's other clients,"
        " or lower WEB_CONCURRENCY or DB_POOL_MAX_CONNECTIONS"
    )


@pytest.mark.parametrize(
    ("shape", "server_connections", "largest_pool_size"),
    [
        ({"pool_size": 100}, 110, 87),  # one pool too large for 97
        ({"pools": 2, "databases": 1}, 140, 38),  # a second user (say, migrations) doubles the pools
        ({"pools": 3, "databases": 3, "reserve_pool": 0}, 180, 32),
    ],
)
def test_pgbouncers_pools_above_the_servers_connections_say_which_pool_size_fits(
    shape, server_connections, largest_pool_size
):
    pooler = PoolerLimits.from_figures(limits(**shape))
    assert pooler.server_connections == server_connections
    assert pooler.largest_pool_size(97) == largest_pool_size
    (problem,) = pooled_problems(settings(), limits(**shape), 100, 3)
    assert f"= {server_connections} server connections, but the server allows 97" in problem
    assert f"lower default_pool_size to {largest_pool_size} or raise max_connections" in problem


def test_max_db_connections_caps_what_pgbouncer_may_open():
    pooler = PoolerLimits.from_figures(limits(pools=2, max_db_connections=90))
    assert pooler.server_connections == 90
    assert "capped at 90 by max_db_connections 90" in pooler.describe_servers()
    assert pooled_problems(settings(), limits(pools=2, max_db_connections=90), 100, 3) == []


def test_without_the_servers_figures_only_the_client_side_is_judged():
    figures = pooled_capacity(Budget(1, 2, 8, 8, pooled=True), PoolerLimits(400, 500), None, None)
    assert (figures["servers_fit"], figures["server_usable_connections"], figures["fits"]) == (None, None, True)


@pytest.mark.parametrize(("wait_timeout", "advised"), [(10, False), (15, False), (16, True), (0, True), (120, True)])
def test_query_wait_timeout_past_half_the_request_budget_is_advised_against(wait_timeout, advised):
    # DB_REQUEST_BUDGET_MS 30000 (half of GUNICORN_TIMEOUT): a read retried once may wait twice.
    problems = pooled_problems(settings(), limits(query_wait_timeout_seconds=wait_timeout), 100, 3)
    assert bool(problems) is advised
    if advised:
        assert "set query_wait_timeout to at most 15 s" in problems[0]


def two_hosts_stats() -> dict[str, object]:
    """Return one worker's unopened pool stats (the shape recommendations reads)."""
    return ConnectionPool.unopened_stats(1, 4, 64)


def pooler_body(**pool: int) -> dict[str, object]:
    """Return the health body's `pooler` for a reachable PgBouncer whose pool has these figures."""
    figures = {"cl_active": 8, "cl_waiting": 0, "sv_active": 20, "sv_idle": 0, "maxwait_ms": 0.0, **pool}
    return {
        "monitored": True,
        "reachable": True,
        "database": "rentals",
        "pool": figures,
        "stats": {"avg_xact_time_ms": 12.5},
        "limits": limits(pool_size=20, reserve_pool=0),
    }


def test_recommendations_count_every_host_behind_pgbouncer():
    # Two hosts x 2 workers x 4: the worker's share of max_client_conn, not of the server.
    s = settings(API_HOSTS=2, WEB_CONCURRENCY=2, GUNICORN_THREADS=4, DB_POOL_MAX_CONNECTIONS=4)
    body = recommendations(s, two_hosts_stats(), 100, 3, pooler_body())
    assert body["current"]["total_max_connections"] == 16
    assert body["current"]["pooler"] == "pgbouncer"
    assert body["optimal_max_connections"] == {"low": 4, "high": 100}  # 400 // 4 workers
    assert body["advice"] == ["no change needed"]


def test_clients_waiting_at_pgbouncer_get_advice_from_the_figures():
    s = settings()
    room = recommendations(s, two_hosts_stats(), 100, 3, pooler_body(cl_waiting=3))["advice"]
    assert any("3 clients wait at PgBouncer" in a and "from 20 up to 97" in a for a in room), room
    full = recommendations(s, two_hosts_stats(), 20, 3, pooler_body(cl_waiting=3))["advice"]
    assert any("the server has no room for a larger pool" in a and "12.5 ms" in a for a in full), full


def test_behind_pgbouncer_without_its_console_the_limits_are_unknown():
    advice = recommendations(settings(), two_hosts_stats(), 100, 3, {"monitored": False})["advice"]
    assert any("are unknown: set PGBOUNCER_ADMIN_URL" in a for a in advice), advice
    direct = settings("postgresql://rentals@db/rentals", DB_POOLER="none")
    assert recommendations(direct, two_hosts_stats(), 100, 3, None)["advice"] == ["no change needed"]
