"""Faults injected into PostgreSQL from outside the app, and probes that watch its backends.

Each fault is undone when its block ends, also when the test fails: locks are rolled back
and their sessions closed, samplers stopped.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import psycopg2

from apps.api.app.models import database
from tests.helpers import own_backends, wait_until

# -- faults ----------------------------------------------------------------------------


def kill_app_backends(conn: psycopg2.extensions.connection) -> int:
    """pg_terminate_backend every app connection to this database; wait for each; return how many."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (database.APPLICATION_NAME,),
        )
        return cur.fetchone()[0]


@contextlib.contextmanager
def locked(database_url: str, table: str) -> Iterator[psycopg2.extensions.connection]:
    """Hold ACCESS EXCLUSIVE on `table` from another session until the block ends (then roll back)."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield conn
    finally:
        conn.rollback()
        conn.close()


@contextlib.contextmanager
def row_locked(database_url: str, product_id: int) -> Iterator[None]:
    """Hold a FOR UPDATE lock on one product row from another session: bookings of it wait."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM products WHERE id = %s FOR UPDATE", (product_id,))
        yield
    finally:
        conn.rollback()
        conn.close()


# -- probes ----------------------------------------------------------------------------


def lock_waiters(conn: psycopg2.extensions.connection) -> list[int]:
    """Return the pids of the app's backends on this database that wait for a lock."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()"
            " AND wait_event_type = 'Lock'",
            (database.APPLICATION_NAME,),
        )
        return [row[0] for row in cur.fetchall()]


def waiting_bookings_of(conn: psycopg2.extensions.connection, product_id: int) -> int:
    """Return how many app backends wait for a lock while booking this one product."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE %s",
            (database.APPLICATION_NAME, f"%FROM products WHERE id = {int(product_id)} AND active FOR NO KEY UPDATE%"),
        )
        return cur.fetchone()[0]


def wait_gone(conn: psycopg2.extensions.connection, timeout: float = 5.0) -> int:
    """Wait until the app has no backend on this database; return how many are left."""
    wait_until(lambda: own_backends(conn) == 0, timeout=timeout, interval=0.05)
    return own_backends(conn)


class BackendSampler:
    """Counts the app's backends on one database every 20 ms in a thread; keeps the highest."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg2.connect(database_url)
        self.conn.autocommit = True
        self.highest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.highest = max(self.highest, own_backends(self.conn))

    def __enter__(self) -> BackendSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()
