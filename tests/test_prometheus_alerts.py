"""End to end: a real Prometheus scrapes a real gunicorn; the database stops with no traffic, and the alert fires.

Short clocks (tests/support/prometheus.py): scrapes and evaluations every second, the probe
every second, and RentalsDatabaseDown's `for:` cut from 30 s to 3 s in a generated copy of
deploy/prometheus/alerts.yml; its expression is the file's own.
"""

from __future__ import annotations

import pytest

from devtools.debian import PROMETHEUS
from tests.helpers import missing_programs_fail, private_server, unavailable_reason, wait_until
from tests.support.gunicorn import start_gunicorn, stop_gunicorn
from tests.support.prometheus import DATABASE_DOWN, Prometheus, alert_rules, outage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def prometheus_program() -> None:
    """Skip when Prometheus cannot be had here (the reason); fail under CI=true."""
    reason = unavailable_reason(PROMETHEUS)
    if reason and missing_programs_fail():
        pytest.fail(f"CI=true needs prometheus and it cannot be installed: {reason}")
    if reason:
        pytest.skip(reason)


def test_the_generated_rules_change_only_the_for_duration_asked_for():
    rules = alert_rules({DATABASE_DOWN: "3s"})
    block = rules[rules.index(f"alert: {DATABASE_DOWN}") :].split("- alert:")[0]
    assert "for: 3s" in block
    assert rules.count("for: 3s") == 1
    with pytest.raises(ValueError, match="RentalsNoSuchAlert"):
        alert_rules({"RentalsNoSuchAlert": "1s"})


def test_database_down_fires_with_no_traffic_and_clears_when_the_server_returns(
    prometheus_program, tmp_path, record_property
):
    with private_server() as server:
        process, port = start_gunicorn(server.dsn(), DB_PROBE_INTERVAL_SECONDS=1, DB_POOL_KEEPALIVE_SECONDS=1)
        try:
            with Prometheus(tmp_path / "prometheus", port, for_durations={DATABASE_DOWN: "3s"}) as prometheus:
                assert wait_until(
                    lambda: prometheus.query('rentals_database_up{target="primary"}') == [1.0], timeout=30
                ), prometheus.log_tail()
                acquisitions = prometheus.query("sum(rentals_db_pool_acquisitions_total)")
                timing = outage(server, prometheus, timeout=40)
                # Nothing borrowed a connection meanwhile: the alert came from the probe alone.
                assert prometheus.query("sum(rentals_db_pool_acquisitions_total)") == acquisitions
        finally:
            output = stop_gunicorn(process)
    record_property("database_down_timing", timing)  # in the JUnit report; python -m tests.support.prometheus measures
    assert timing["fire_seconds"] is not None, "the alert did not fire"
    assert timing["labels"].get("target") == "primary", f"fired, but not from the probe: {timing['labels']}"
    assert timing["clear_seconds"] is not None, "the alert did not clear"
    # One worker of the two probed for the host, from start to end.
    assert output.count("probes the database for this host") == 1, output[-3000:]
