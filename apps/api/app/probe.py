"""One bounded probe of a database: connect, `SELECT 1`, disconnect, all within a deadline.

What the host's database probe (metrics.DatabaseProbe) runs against each target every
DB_PROBE_INTERVAL_SECONDS. It opens a connection of its own, outside the pool: it asks what
every new connection of the pool would ask (does the server accept us and answer?), keeps no
server connection between probes, and shows in pg_stat_activity as APPLICATION_NAME. Through
PgBouncer it asks the same of the pooler and the server behind it together.

libpq is driven in non-blocking mode (psycopg2's asynchronous connections), so the probe
ends by its deadline whatever the server does: one that accepts TCP and never answers, or
answers the login and never the query, is "no answer within N s", never a probe that hangs
and leaves the last result standing.
"""

from __future__ import annotations

import select
import time

import psycopg2
import psycopg2.extensions

APPLICATION_NAME = "rentals-api-probe"
_WAIT_FOR = {psycopg2.extensions.POLL_READ: select.POLLIN, psycopg2.extensions.POLL_WRITE: select.POLLOUT}


class TargetUnreachable(Exception):
    """The target refused the probe, failed it, or did not answer in time."""


def _sentence(exc: psycopg2.Error) -> str:
    # libpq's messages name the host and the user, never the password.
    return " ".join(str(exc).split()) or type(exc).__name__


def _wait(conn: psycopg2.extensions.connection, deadline: float, timeout: float) -> None:
    # Drive libpq until the connect or the query is done, sleeping in poll() in between.
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise TargetUnreachable(f"no answer within {timeout:g} s")
        poller = select.poll()
        poller.register(conn.fileno(), _WAIT_FOR[state])
        poller.poll(left * 1000)


def probe(dsn: str, timeout: float) -> float:
    """Connect to `dsn`, run SELECT 1 and disconnect; return the seconds it took.

    Raises TargetUnreachable, with a sentence that holds no password, when the target
    refuses or fails, or has not answered within `timeout` seconds (the probe then stops).
    """
    started = time.monotonic()
    deadline = started + timeout
    try:
        conn = psycopg2.connect(dsn, async_=True, application_name=APPLICATION_NAME)
    except psycopg2.Error as exc:
        raise TargetUnreachable(_sentence(exc)) from None
    try:
        _wait(conn, deadline, timeout)
        cur = conn.cursor()
        cur.execute("SELECT 1")
        _wait(conn, deadline, timeout)
    except psycopg2.Error as exc:
        raise TargetUnreachable(_sentence(exc)) from None
    finally:
        conn.close()
    return time.monotonic() - started
