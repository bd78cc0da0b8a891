"""Faults injected into PostgreSQL from outside the app, and probes that watch its backends.

Killed backends, locked tables and rows, a server that stops answering. Each fault that
lasts is undone when its block ends, also when the test fails: locks are rolled back and
their sessions closed, the proxy's sockets cut, samplers stopped.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import psycopg2

from apps.api.app.models import database
from tests.helpers import own_backends, wait_until

# -- faults ----------------------------------------------------------------------------


def terminate_backend(conn: psycopg2.extensions.connection, pid: int) -> None:
    """Kill one backend with pg_terminate_backend and wait (up to 5 s) until it is gone."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        assert cur.fetchone()[0], f"backend {pid} did not exit"


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


class StallingProxy:
    """A TCP proxy to the real test server that can stop answering new connections.

    While `stall` is set, a new connection is accepted and then left without a reply, as a
    server host does when its accept queue is full or the network drops its packets.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stall = threading.Event()
        self.stalled = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            if self.stall.is_set():
                self.stalled += 1
                continue
            upstream = socket.create_connection(self.target)
            self._sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop listening and cut every connection, stalled ones included."""
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


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
