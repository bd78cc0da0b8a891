"""make bench's point set behind PgBouncer: which apps it measures where, and the PgBouncer it runs.

The benchmark itself is never run here (no timed assertion); these pin its plan and that
its PgBouncer, a real one in front of a real PostgreSQL, gives the apps behind it the
timeouts DB_POOLER=pgbouncer needs, touches no other role, and stops with the run.
"""

from __future__ import annotations

import contextlib
import os

import psutil
import psycopg2
import pytest

from bench import dataset, pooler
from bench.settings import ALL_APPS, BenchConfigError, load_bench_settings
from tests.helpers import DEFAULT_SESSION_TIMEOUTS, app_config, private_server

BEHIND = ["api-pgbouncer", "api-pgbouncer-null"]


def test_the_apps_behind_pgbouncer_are_selected_like_the_others():
    settings = load_bench_settings({"BENCH_APPS": "api,api-pgbouncer,api-pgbouncer-null"})
    assert settings.apps_for("customer") == ["api", *BEHIND]
    assert settings.apps_for("mixed") == ["api", *BEHIND]
    assert settings.apps_for("rentals_list") == ["api"]


def test_by_default_pgbouncer_joins_the_customer_read_and_the_mixed_workload_only():
    settings = load_bench_settings({})
    assert settings.apps_for("customer") == list(ALL_APPS)
    assert settings.apps_for("mixed") == ["api", "api-null", *BEHIND]
    for scenario in ("rentals_list", "rentals_deep", "dashboard", "rentals_post"):
        assert not set(settings.apps_for(scenario)) & set(BEHIND), scenario


def test_bench_pooler_scenarios_picks_where_pgbouncer_is_measured():
    settings = load_bench_settings({"BENCH_POOLER_SCENARIOS": "mixed"})
    assert settings.apps_for("customer") == [name for name in ALL_APPS if name not in BEHIND]
    assert settings.apps_for("mixed")[-2:] == BEHIND


@pytest.mark.parametrize("variable", ["BENCH_APPS", "BENCH_POOLER_SCENARIOS"])
def test_an_unknown_name_is_refused_with_a_sentence(variable):
    with pytest.raises(BenchConfigError, match=variable):
        load_bench_settings({variable: "api-pgbouncerr"})


def _setting(url: str, name: str) -> str:
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,))
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.pgbouncer
@pytest.mark.slow
def test_the_runs_pgbouncer_carries_the_timeouts_for_its_role_only_and_stops_with_the_run(tmp_path):
    with private_server() as server:
        password = "bench-test-password"
        server.ensure_role_and_database(dataset.ROLE, password, dataset.DATABASE)
        direct_url = server.dsn(dataset.DATABASE, user=dataset.ROLE, password=password)
        data = dataset.Dataset(server, direct_url, dataset.Domain(set(), {}), "synthetic")
        settings = load_bench_settings({"BENCH_WORKERS": "2", "BENCH_THREADS": "3"})
        own = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "BENCH_"))}
        app_env = {**own, **app_config(direct_url)}
        logs_dir = tmp_path / "logs"
        logs_dir.mkdir()

        class LaterStepFailed(Exception):
            """Stands for anything that fails after PgBouncer started (an app that does not boot)."""

        with pytest.raises(LaterStepFailed), contextlib.ExitStack() as stack:
            run_pooler = pooler.start(data, settings, app_env, stack, logs_dir)
            process = psutil.Process(run_pooler.pid)
            folder = run_pooler.bouncer.folder
            for name, ms in DEFAULT_SESSION_TIMEOUTS.items():
                assert _setting(run_pooler.url, name) == str(ms), name
                # The role the other apps log in as keeps the server's defaults.
                assert _setting(direct_url, name) == "0", name
            assert run_pooler.bouncer.config["default_pool_size"] == "6"
            before = run_pooler.stats()
            _setting(run_pooler.url, "statement_timeout")
            delta = pooler.point_delta(before, run_pooler.stats())
            assert delta["xacts"] >= 1
            raise LaterStepFailed
        assert not process.is_running()
        assert not folder.exists()
        assert "process up: PgBouncer" in (logs_dir / f"{pooler.LOG_NAME}.log").read_text()


def test_every_app_the_bench_runs_has_its_colour_in_the_plots():
    # A missing one broke the ratio plot at the end of a 31-minute run (matplotlib refuses None).
    from bench.plots import COLORS

    assert [app for app in ALL_APPS if app not in COLORS] == []
