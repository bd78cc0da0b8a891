"""Fork safety: a pool created before os.fork() is never used by the child."""

from __future__ import annotations

import gc
import json
import os

import pytest

from apps.api.app.models.database import PoolClosed, close_pool, get_pool
from tests.helpers import backend_pid, give_back, hold, wait_until

# Python 3.12+ warns about forking a process that runs threads (the pool's maintenance thread).
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def run_in_child(child) -> dict:
    """Fork; run `child()` in the child, send its dict back through a pipe; return it with the exit code."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(read_end)
            try:
                report = child()
            except BaseException as exc:
                report, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
            os.write(write_end, json.dumps(report, default=str).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks) or b"{}")
    report["exit_code"] = os.waitstatus_to_exitcode(status)
    return report


def test_child_gets_a_new_pool_and_the_parents_connection_survives(app):
    with app.app_context():
        parent_pool = get_pool()
        parent_backend = backend_pid()

    def child():
        with app.app_context():
            pool = get_pool()
            return {"new_pool": pool is not parent_pool, "backend": backend_pid(), "pid": os.getpid()}

    report = run_in_child(child)
    assert report.get("error") is None, report
    assert report["exit_code"] == 0
    assert report["new_pool"] is True
    assert report["backend"] != parent_backend
    with app.app_context():
        assert get_pool() is parent_pool
        assert backend_pid() == parent_backend, "the parent's connection was lost to the child"
    assert parent_pool.stats()["discarded"] == 0


def test_inherited_pool_refuses_to_lend_in_the_child(app):
    with app.app_context():
        parent_pool = get_pool()
        parent_backend = backend_pid()

    def child():
        try:
            parent_pool.getconn()
        except PoolClosed:
            refused = True
        else:
            refused = False
        return {"refused": refused, "closed": parent_pool.closed}

    report = run_in_child(child)
    assert report.get("error") is None, report
    assert report == {"refused": True, "closed": True, "exit_code": 0}
    with app.app_context():
        assert backend_pid() == parent_backend


def test_child_dropping_the_inherited_pool_does_not_end_the_parents_sessions(app, admin_conn):
    # Closing or garbage-collecting inherited connections in the child must not send the
    # server a Terminate for the parent's sessions.
    parent_pool, held = hold(app, 3)
    backends = {conn.get_backend_pid() for conn in held}
    give_back(parent_pool, held)
    del held

    def child():
        with app.app_context():
            new_backend = backend_pid()
        close_pool(app)  # the child's own pool: its own sessions end
        parent_pool.close()  # inherited: only forgotten
        for conn in list(parent_pool._all):  # the worst case: every inherited connection closed by hand
            conn.close()
        gc.collect()
        return {"backend": new_backend}

    report = run_in_child(child)
    assert report.get("error") is None, report
    assert report["backend"] not in backends

    def alive() -> set[int]:
        with admin_conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (list(backends),))
            return {row[0] for row in cur.fetchall()}

    # Give a wrongly sent Terminate time to land before checking.
    assert not wait_until(lambda: alive() != backends, timeout=0.5)
    with app.app_context():
        pids = set()
        for _ in range(3):
            pids.add(backend_pid())
    assert pids <= backends
    assert parent_pool.stats()["discarded"] == 0
