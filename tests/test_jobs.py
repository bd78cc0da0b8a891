"""Scheduled jobs in one process: claiming slots, recording ends, retries with backoff, run-once.

The claim is one statement in autocommit, so the module also runs through PgBouncer in
transaction mode. The multi-process guarantees (several schedulers, a killed one) are in
tests/test_job_schedulers.py.
"""

from __future__ import annotations

import threading

import pytest

from apps.api.app.jobs import JOBS, Job, runner
from apps.api.app.models import database, job_runs

pytestmark = pytest.mark.both_routes


def _job(function, name: str = "test_job", every: float = 3600, timeout: float = 30, **options) -> Job:
    return Job(name, every, function, timeout, **options)


def test_a_slot_is_claimed_by_one_of_many_concurrent_claimers(app):
    calls: list[int] = []
    job = _job(lambda: calls.append(1) or {"n": 1})
    outcomes: list[object] = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        with app.app_context():
            barrier.wait()
            outcomes.append(runner.run_due(job, f"claimer-{n}"))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ran = [outcome for outcome in outcomes if outcome is not None]
    assert len(calls) == 1 and len(ran) == 1
    assert ran[0].outcome == "succeeded" and ran[0].recorded
    with app.app_context():
        (row,) = job_runs.slot_runs("test_job")
        assert (row["status"], row["attempt"], row["summary"]) == ("succeeded", 1, {"n": 1})
        assert runner.run_due(job, "late") is None


def test_a_failed_run_is_recorded_and_retried_after_its_backoff(app, admin_conn):
    attempts: list[int] = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("the first try fails")
        return {"tries": len(attempts)}

    job = _job(flaky, retry_base=60, retry_max=60)
    with app.app_context():
        failed = runner.run_due(job, "me")
        assert failed.outcome == "failed" and "RuntimeError: the first try fails" in failed.error
        # Not before its retry time, by anyone.
        assert runner.run_due(job, "other") is None
        with admin_conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM retry_at - finished_at) FROM job_runs WHERE job = 'test_job'")
            assert cur.fetchone()[0] == pytest.approx(60, abs=1)
            cur.execute("UPDATE job_runs SET retry_at = now() WHERE job = 'test_job'")
        retried = runner.run_due(job, "other")
        assert retried.outcome == "succeeded" and retried.attempt == 2 and retried.summary == {"tries": 2}
        (row,) = job_runs.slot_runs("test_job")
        # The slot keeps its last failure's error after the retry succeeded.
        assert row["status"] == "succeeded" and "first try fails" in row["error"]
        (figures,) = job_runs.job_figures(["test_job"], [3600], [0])
        assert figures["runs"] == {"failed": 1, "succeeded": 1}
        assert "first try fails" in figures["last_error"]


def test_backoff_doubles_up_to_its_cap():
    job = _job(dict, retry_base=5, retry_max=30)
    assert [job.backoff(n) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 30, 30]


def test_a_run_past_its_lease_is_taken_over_and_cannot_record_its_end(app, admin_conn):
    job = _job(dict, timeout=30)
    with app.app_context():
        claim = job_runs.claim(job.name, job.every, job.offset, job.timeout, "dead-host:1")
        assert claim["attempt"] == 1
        assert runner.run_due(job, "other") is None  # the lease holds
        with admin_conn.cursor() as cur:
            cur.execute("UPDATE job_runs SET claimed_until = now() - interval '1 second'")
        taken = runner.run_due(job, "other")
        assert taken.outcome == "succeeded" and taken.attempt == 2
        # The first holder's late end changes nothing.
        assert not job_runs.record_success(job.name, claim["slot_at"], 1, {"late": True}, 7)
        (row,) = job_runs.slot_runs(job.name)
        assert row["summary"] == {} and "dead-host:1 did not end within its timeout" in row["error"]
        (figures,) = job_runs.job_figures([job.name], [job.every], [0])
        assert figures["runs"] == {"expired": 1, "succeeded": 1}


def test_manual_runs_take_a_slot_of_their_own(app):
    calls: list[int] = []
    job = _job(lambda: calls.append(1) or {})
    with app.app_context():
        assert runner.run_due(job, "me").outcome == "succeeded"
        assert runner.run_due(job, "me") is None
        assert runner.run_due(job, "me", manual=True).outcome == "succeeded"
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "Bad-Name"}, "lowercase"),
        ({"every": 0}, "every must be greater than 0"),
        ({"timeout": 0}, "timeout must be greater than 0"),
        ({"offset": 3600}, "offset must be"),
    ],
)
def test_bad_declarations_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        _job(dict, **options)


def test_the_business_jobs_are_declared():
    assert {"expire_reservations", "overdue_reminders", "purge_rate_limits"} <= set(JOBS)


def test_run_once_runs_the_current_slot_once(app):
    runner_cli = app.test_cli_runner()
    first = runner_cli.invoke(args=["jobs", "run-once", "purge_rate_limits"])
    assert first.exit_code == 0, first.output
    assert first.output.strip() == 'purge_rate_limits: {"idempotency_keys": 0, "rate_limits": 0}'
    second = runner_cli.invoke(args=["jobs", "run-once", "purge_rate_limits"])
    assert second.exit_code == 0 and "ran already" in second.output
    unknown = runner_cli.invoke(args=["jobs", "run-once", "nope"])
    assert unknown.exit_code != 0 and "no job named nope" in unknown.output


def test_a_period_may_name_a_setting(make_app):
    job = _job(dict, every="DASHBOARD_REFRESH_SECONDS")
    assert job.period(make_app(DASHBOARD_REFRESH_SECONDS="7").config["SETTINGS"]) == 7
    with pytest.raises(ValueError, match="seconds or a setting's name"):
        _job(dict, every="NO_SUCH_SETTING")


def test_jobs_list_shows_the_configured_periods(make_app):
    app = make_app(DASHBOARD_REFRESH_SECONDS="7")
    listing = app.test_cli_runner().invoke(args=["jobs", "list"]).output
    assert "refresh_dashboard: every 7 s (DASHBOARD_REFRESH_SECONDS), timeout 120 s" in listing
    assert "expire_reservations: every 300 s, timeout 120 s" in listing


def test_polling_a_taken_slot_writes_nothing(app, admin_conn):
    job = _job(dict)
    with app.app_context():
        runner.run_due(job, "me")
        with admin_conn.cursor() as cur:
            cur.execute("SELECT xmin::text, xmax::text FROM job_runs UNION ALL SELECT xmin::text, xmax::text FROM jobs")
            before = cur.fetchall()
            for _ in range(3):
                assert runner.run_due(job, "other") is None
            cur.execute("SELECT xmin::text, xmax::text FROM job_runs UNION ALL SELECT xmin::text, xmax::text FROM jobs")
            # No new row version and no row lock (a lock would set xmax).
            assert cur.fetchall() == before


def test_a_summary_json_cannot_store_is_recorded_as_text(app):
    import datetime
    import decimal

    job = _job(lambda: {"day": datetime.date(2030, 1, 2), "amount": decimal.Decimal("1.50")})
    with app.app_context():
        outcome = runner.run_due(job, "me")
        assert outcome.outcome == "succeeded" and outcome.summary == {"day": "2030-01-02", "amount": "1.50"}
        assert job_runs.slot_runs(job.name)[0]["summary"] == {"day": "2030-01-02", "amount": "1.50"}


@pytest.mark.direct_only("no database is reached on either route")
def test_a_scheduler_outlives_an_unreachable_database(make_app, caplog):
    from devtools.embedded_pg import free_port

    app = make_app(DATABASE_URL=f"postgresql://nobody:x@127.0.0.1:{free_port()}/nothing", DB_POOL_MIN_CONNECTIONS="0")
    scheduler = runner.Scheduler(app, [_job(dict)], poll=0.01)
    with app.app_context():
        assert scheduler.tick() == [] and scheduler.tick() == []
    # One warning per outage, not one per poll.
    assert len([r for r in caplog.records if "cannot reach the jobs' tables" in r.getMessage()]) == 1


def test_a_scheduler_reads_from_the_primary_only_and_leaves_the_host_probe_to_the_web_workers(
    make_app, direct_database_url
):
    # Without PROMETHEUS_MULTIPROC_DIR every process counts as its own host, so a scheduler that
    # kept the web workers' machinery would probe every target and open replica pools for nothing.
    app = make_app(DATABASE_REPLICA_URLS=direct_database_url)
    db = database._database(app)
    assert db.replicas is not None
    database.serve_no_requests(app)
    with app.app_context():
        assert database.execute_query_one("SELECT 1 AS one", replica_ok=True) == {"one": 1}
        db._host_tick()  # what the primary pool's maintenance thread calls about once a second
    assert db.replicas is None
    assert db._probe is None
    database.close_pool(app)
