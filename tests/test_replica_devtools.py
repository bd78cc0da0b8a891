"""The devtools' streaming replica: a hot standby of the embedded server, fed through a replication slot."""

from __future__ import annotations

import psycopg2
import pytest

pytestmark = pytest.mark.slow


def test_replica_is_a_hot_standby_that_replays_the_primary(pg_replica_pair) -> None:
    primary, replica = pg_replica_pair.primary, pg_replica_pair.replica
    assert replica.in_recovery()
    primary.execute(
        "INSERT INTO customers (full_name, email) VALUES ('Replayed', 'replayed@example.com')",
        dbname=pg_replica_pair.dbname,
    )
    replica.wait_caught_up()
    rows = replica.execute(
        "SELECT full_name FROM customers WHERE email = 'replayed@example.com'", dbname=pg_replica_pair.dbname
    )
    assert rows == [("Replayed",)]
    slots = primary.execute("SELECT slot_type, active FROM pg_replication_slots WHERE slot_name = %s", (replica.slot,))
    assert slots == [("physical", True)]
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        replica.execute("CREATE TABLE nope (id int)", dbname=pg_replica_pair.dbname)


def test_paused_replay_holds_the_replica_back_until_resumed(pg_replica_pair) -> None:
    primary, replica, dbname = pg_replica_pair.primary, pg_replica_pair.replica, pg_replica_pair.dbname
    replica.execute("SELECT pg_wal_replay_pause()")
    try:
        primary.execute("INSERT INTO customers (full_name, email) VALUES ('Held', 'held@example.com')", dbname=dbname)
        with pytest.raises(TimeoutError):
            replica.wait_caught_up(timeout=0.5)
        assert replica.execute("SELECT count(*) FROM customers WHERE email = 'held@example.com'", dbname=dbname) == [
            (0,)
        ]
    finally:
        replica.execute("SELECT pg_wal_replay_resume()")
    replica.wait_caught_up()
    assert replica.execute("SELECT count(*) FROM customers WHERE email = 'held@example.com'", dbname=dbname) == [(1,)]
