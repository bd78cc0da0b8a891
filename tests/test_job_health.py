"""Watching the jobs: /api/health/jobs, the warning in /api/health/db, and the job metrics."""

from __future__ import annotations

import datetime

import pytest

from apps.api.app.jobs import JOBS, runner


@pytest.fixture
def jobs_url_reply(client, health_headers):
    """GET /api/health/jobs with the health token: return (status code, body)."""

    def get():
        reply = client.get("/api/health/jobs", headers=health_headers)
        return reply.status_code, reply.json

    return get


def by_name(body: dict) -> dict[str, dict]:
    """Return the reply's jobs by name."""
    return {job["name"]: job for job in body["jobs"]}


def test_jobs_health_needs_the_health_token(client):
    assert client.get("/api/health/jobs").status_code == 401


def test_jobs_that_never_ran_are_listed_without_a_warning(jobs_url_reply):
    code, body = jobs_url_reply()
    assert code == 200 and body["status"] == "healthy" and body["warnings"] == []
    assert set(by_name(body)) == set(JOBS)
    purge = by_name(body)["purge_rate_limits"]
    assert purge["last_success_at"] is None and purge["missed_slots"] == 0 and purge["has_run"] is False
    assert purge["every_seconds"] == 3600 and purge["timeout_seconds"] == 120
    assert purge["runs"] == {"succeeded": 0, "failed": 0, "expired": 0, "abandoned": 0}
    assert set(body["outbox"]) >= {"pending", "parked"}


def test_a_run_shows_as_the_last_success_with_the_next_slot_due(app, jobs_url_reply):
    with app.app_context():
        runner.run_due(JOBS["purge_rate_limits"], "me")
    purge = by_name(jobs_url_reply()[1])["purge_rate_limits"]
    assert purge["runs"]["succeeded"] == 1 and purge["last_summary"] == {"rate_limits": 0, "idempotency_keys": 0}
    last_success = datetime.datetime.fromisoformat(purge["last_success_at"])
    next_due = datetime.datetime.fromisoformat(purge["next_due_at"])
    assert next_due > last_success and purge["lag_seconds"] == 0 and purge["missed_slots"] == 0


def test_a_job_that_missed_two_slots_turns_both_health_statuses_to_warning(
    client, health_headers, admin_conn, jobs_url_reply
):
    with admin_conn.cursor() as cur:
        # expire_reservations (every 300 s) last succeeded in a slot 20 minutes ago and failed since.
        cur.execute(
            "INSERT INTO jobs (name, first_slot_at, last_success_slot_at, last_success_at, last_failure_at,"
            " last_error, runs)"
            " VALUES ('expire_reservations', now() - interval '1 hour', now() - interval '20 minutes',"
            " now() - interval '20 minutes', now(), 'OperationalError: boom', '{\"failed\": 3}')"
        )
    code, body = jobs_url_reply()
    expire = by_name(body)["expire_reservations"]
    assert code == 200 and body["status"] == "warning"
    assert (
        expire["missed_slots"] >= 2
        and expire["lag_seconds"] >= 600
        and expire["last_error"] == "OperationalError: boom"
    )
    assert expire["runs"]["failed"] == 3
    (warning,) = body["warnings"]
    assert "job expire_reservations has missed" in warning and "OperationalError: boom" in warning
    db = client.get("/api/health/db", headers=health_headers).json
    assert db["status"] == "warning" and warning in db["warnings"]


def test_one_missed_slot_is_no_warning_yet(client, health_headers, admin_conn, jobs_url_reply):
    with admin_conn.cursor() as cur:
        cur.execute(
            "INSERT INTO jobs (name, first_slot_at, last_success_slot_at, last_success_at)"
            " VALUES ('expire_reservations', now() - interval '1 hour', now() - interval '8 minutes', now())"
        )
    assert by_name(jobs_url_reply()[1])["expire_reservations"]["missed_slots"] in (0, 1)
    assert client.get("/api/health/db", headers=health_headers).json["status"] == "healthy"


def test_the_metrics_carry_the_runs_and_the_last_success(app, client, health_headers):
    with app.app_context():
        runner.run_due(JOBS["purge_rate_limits"], "me")
    text = client.get("/metrics", headers=health_headers).get_data(as_text=True)
    assert 'rentals_job_runs_total{job="purge_rate_limits",outcome="succeeded"} 1.0' in text
    assert 'rentals_job_runs_total{job="expire_reservations",outcome="failed"} 0.0' in text
    assert 'rentals_job_last_success_timestamp_seconds{job="purge_rate_limits"}' in text
    assert 'rentals_job_last_success_timestamp_seconds{job="expire_reservations"}' not in text
    assert 'rentals_job_missed_slots{job="expire_reservations"} 0.0' in text
    assert 'rentals_job_period_seconds{job="purge_rate_limits"} 3600.0' in text


def test_missing_tables_answer_503_with_the_fix(client, health_headers, admin_conn):
    with admin_conn.cursor() as cur:
        cur.execute("DROP TABLE jobs")
    reply = client.get("/api/health/jobs", headers=health_headers)
    assert reply.status_code == 503 and "db upgrade" in reply.json["error"]
    assert client.get("/api/health/db", headers=health_headers).status_code == 200
