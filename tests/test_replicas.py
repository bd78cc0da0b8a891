"""Read replicas: list reads go to a replica, writes to the primary, a consistency token brings the
client's own writes back, and a replica that lags or fails is skipped without an error.

The pair is real (tests/support/replicas.py): a primary and a streaming hot standby from the
embedded binaries. Which server served a read is told by what it sees: with replay paused on
the replica, a row written straight to the primary is visible only there.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from apps.api.app.consistency import HEADER, format_lsn, parse_lsn
from apps.api.app.metrics import READS, REPLICA_FALLBACKS
from apps.api.app.models.database import execute_query_one
from tests.helpers import bearer, insert_row, login, wait_until
from tests.support.replicas import replica_health, wait_for_replica_state

pytestmark = pytest.mark.slow


@pytest.fixture
def replica_user(primary_conn, password_hash) -> dict:
    """An active admin in the pair's database (written on the primary)."""
    return insert_row(
        primary_conn,
        "users",
        email=f"admin-{uuid.uuid4().hex[:8]}@example.com",
        password_hash=password_hash,
        full_name="Replica Admin",
        role="admin",
        active=True,
    )


def _customer_email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def _emails(reply) -> set[str]:
    assert reply.status_code == 200, reply.get_json()
    return {row["email"] for row in reply.get_json()["items"]}


def _insert_on_primary(primary_conn, prefix: str) -> str:
    email = _customer_email(prefix)
    insert_row(primary_conn, "customers", full_name=prefix, email=email)
    return email


def _search(client, headers, email: str, token: str | None = None):
    extra = {HEADER: token} if token else {}
    return client.get("/api/customers", query_string={"q": email}, headers={**headers, **extra})


def test_list_reads_go_to_the_replica_and_writes_to_the_primary(
    make_replica_app, running_pair, primary_conn, replica_user, health_headers
):
    app = make_replica_app(DB_REPLICA_MAX_LAG_MS=60_000)
    client, headers = app.test_client(), bearer(app, replica_user)
    wait_for_replica_state(client, health_headers, "up")
    created = client.post(
        "/api/customers", json={"full_name": "Written", "email": _customer_email("written")}, headers=headers
    )
    assert created.status_code == 201
    assert parse_lsn(created.headers[HEADER]) > 0  # the write went to the primary: a replica refuses writes
    running_pair.replica.wait_caught_up()
    running_pair.replica.execute("SELECT pg_wal_replay_pause()")
    hidden = _insert_on_primary(primary_conn, "hidden")
    replica_reads = READS.labels("replica1")._value.get()

    # Only the primary has `hidden`: a list that lacks it was served by the replica.
    assert _search(client, headers, hidden).get_json()["items"] == []
    assert _emails(_search(client, headers, created.get_json()["email"])) == {created.get_json()["email"]}
    assert READS.labels("replica1")._value.get() >= replica_reads + 2


def test_a_read_with_the_token_of_a_write_sees_it_then_goes_back_to_the_replica(
    make_replica_app, running_pair, primary_conn, replica_user, health_headers
):
    app = make_replica_app(DB_REPLICA_MAX_LAG_MS=60_000)
    client, headers = app.test_client(), bearer(app, replica_user)
    wait_for_replica_state(client, health_headers, "up")
    running_pair.replica.execute("SELECT pg_wal_replay_pause()")
    email = _customer_email("mine")
    created = client.post("/api/customers", json={"full_name": "Mine", "email": email}, headers=headers)
    assert created.status_code == 201
    token = created.headers[HEADER]

    # Replay is paused: the replica has not got the write, so the primary serves both reads.
    assert _emails(_search(client, headers, email, token)) == {email}
    one = client.get(f"/api/customers/{created.get_json()['id']}", headers={**headers, HEADER: token})
    assert one.status_code == 200
    assert _search(client, headers, email).get_json()["items"] == []  # without the token: the stale replica

    running_pair.replica.execute("SELECT pg_wal_replay_resume()")
    running_pair.replica.wait_caught_up()
    assert wait_until(
        lambda: parse_lsn(replica_health(client, health_headers)["replay_lsn"]) >= parse_lsn(token), timeout=15
    )
    running_pair.replica.execute("SELECT pg_wal_replay_pause()")
    later = _insert_on_primary(primary_conn, "later")
    # The replica has replayed the token and serves the read: it has the write, not `later`.
    assert _emails(_search(client, headers, email, token)) == {email}
    assert _search(client, headers, later, token).get_json()["items"] == []


def test_without_a_token_a_replica_lagging_past_the_limit_is_skipped(
    make_replica_app, running_pair, primary_conn, replica_user, health_headers
):
    app = make_replica_app(DB_REPLICA_MAX_LAG_MS=300)
    client, headers = app.test_client(), bearer(app, replica_user)
    wait_for_replica_state(client, health_headers, "up")
    running_pair.replica.execute("SELECT pg_wal_replay_pause()")
    behind = _insert_on_primary(primary_conn, "behind")
    lagging = wait_for_replica_state(client, health_headers, "lagging")
    assert lagging["lag_seconds"] > 0.3 and lagging["lag_bytes"] > 0

    assert _emails(_search(client, headers, behind)) == {behind}  # served by the primary
    body = client.get("/api/health/db", headers=health_headers).get_json()
    assert body["status"] == "warning"
    assert any("replica replica1 lags" in warning for warning in body["warnings"])

    running_pair.replica.execute("SELECT pg_wal_replay_resume()")
    wait_for_replica_state(client, health_headers, "up")
    assert client.get("/api/health/db", headers=health_headers).get_json()["status"] == "healthy"


def test_a_read_cancelled_by_a_recovery_conflict_is_served_by_the_primary(
    make_replica_app, running_pair, primary_conn, health_headers
):
    app = make_replica_app(DB_REPLICA_MAX_LAG_MS=60_000)
    wait_for_replica_state(app.test_client(), health_headers, "up")
    conflicts = REPLICA_FALLBACKS.labels("replica1", "conflict")
    before = conflicts._value.get()
    result = {}

    def read() -> None:
        with app.app_context():
            result["row"] = execute_query_one(
                "SELECT pg_is_in_recovery() AS in_recovery, (SELECT count(*) FROM customers) AS n, pg_sleep(3)",
                replica_ok=True,
            )

    reader = threading.Thread(target=read)
    reader.start()
    # The replica's query holds a lock on customers; replaying the primary's exclusive lock
    # must cancel it (max_standby_streaming_delay 100 ms).
    holding = (
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE l.relation = 'customers'::regclass AND l.granted AND a.query LIKE '%%pg_sleep(3)%%'"
        " AND a.pid <> pg_backend_pid()"
    )
    assert wait_until(lambda: running_pair.replica.execute(holding, dbname=running_pair.dbname)[0][0] == 1, timeout=15)
    with primary_conn.cursor() as cur:
        cur.execute("BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE; COMMIT")
    reader.join(timeout=30)
    assert result["row"]["in_recovery"] is False
    assert conflicts._value.get() == before + 1


def test_reads_survive_a_replica_stopped_under_load_and_go_back_to_it(
    make_replica_app, running_pair, replica_user, health_headers
):
    app = make_replica_app()
    headers = bearer(app, replica_user)
    client = app.test_client()
    wait_for_replica_state(client, health_headers, "up")
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        own = app.test_client()
        while not stop.is_set():
            statuses.append(own.get("/api/customers?limit=5", headers=headers).status_code)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: len(statuses) > 20, timeout=15)
        running_pair.replica.stop()
        wait_for_replica_state(client, health_headers, "down")
        served_while_down = len(statuses)
        assert wait_until(lambda: len(statuses) > served_while_down + 20, timeout=15)
        running_pair.replica.start()
        wait_for_replica_state(client, health_headers, "up")
        replica_reads = READS.labels("replica1")._value.get()
        assert wait_until(lambda: READS.labels("replica1")._value.get() > replica_reads + 10, timeout=15)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert statuses and set(statuses) == {200}


def test_login_and_its_rate_limit_work_with_replicas(make_replica_app, replica_user):
    client = make_replica_app().test_client()
    assert login(client, replica_user["email"]).status_code == 200
    assert login(client, replica_user["email"], "wrong password").status_code == 401


@pytest.mark.parametrize("token", ["0", "x/1", "1/2/3", "123456789/0", "G/0", " "])
def test_a_malformed_token_gets_400(client, staff_headers, token):
    reply = client.get("/api/customers", headers={**staff_headers, HEADER: token})
    assert reply.status_code == 400
    assert reply.get_json()["error"]["code"] == "invalid_consistency_token"


def test_without_replicas_replies_carry_no_token(client, admin_headers):
    created = client.post("/api/customers", json={"full_name": "No Token"}, headers=admin_headers)
    assert created.status_code == 201
    assert HEADER not in created.headers


def test_tokens_read_and_write_pg_lsn_text():
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    with pytest.raises(ValueError):
        parse_lsn("16/B374D848/1")


def test_the_openapi_document_declares_the_token(client):
    doc = client.get("/api/openapi.json").get_json()
    listing = doc["paths"]["/api/customers"]["get"]
    assert HEADER in {p["name"] for p in listing["parameters"] if p["in"] == "header"}
    assert HEADER in doc["paths"]["/api/customers"]["post"]["responses"]["201"]["headers"]


def test_replica_urls_are_checked(tmp_path):
    from apps.api.app.config import ConfigError, load_settings
    from tests.helpers import app_config

    with pytest.raises(ConfigError, match="DATABASE_REPLICA_URLS"):
        load_settings(app_config("postgresql://a@b/c", DATABASE_REPLICA_URLS="mysql://x@y/z"))
    settings = load_settings(
        app_config("postgresql://a@b/c", DATABASE_REPLICA_URLS="postgresql://r1/c, postgresql://r2/c")
    )
    assert [name for name, _ in settings.replica_targets()] == ["replica1", "replica2"]
