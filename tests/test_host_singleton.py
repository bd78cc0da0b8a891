"""HostSingleton: one process of a host holds the lock file; when it dies, another takes over; a fork holds nothing.

Real processes, a real lock file: the holder is a separate Python process, killed with SIGKILL
as the OOM killer would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from apps.api.app.host_singleton import HostSingleton, holder
from tests.support.gunicorn import ROOT

# Another worker of the host, as the kernel sees it: a process that takes the same flock
# (without the app's imports, which take a second to load).
HOLD = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("refused", flush=True)
    else:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        print("held", flush=True)
    time.sleep(60)
    """
)


@contextlib.contextmanager
def other_process(path) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run a process that tries to take the lock and sleeps; yield it and what it said (held or refused)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        yield process, process.stdout.readline().strip()
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()


def test_one_process_holds_the_lock_and_another_takes_over_when_it_is_killed(tmp_path):
    path = tmp_path / "job.lock"
    mine = HostSingleton(path)
    with other_process(path) as (other, said):
        assert said == "held"
        assert holder(path) == other.pid
        assert mine.acquire() is False and mine.held is False
        other.send_signal(signal.SIGKILL)
        other.wait(10)
        # Nobody releases anything: the kernel drops a dead process's locks.
        assert mine.acquire() is True and mine.held is True
    assert holder(path) == os.getpid()
    assert mine.acquire() is True  # holding it again is a no-op
    with other_process(path) as (_, said):
        assert said == "refused"
    mine.release()
    assert mine.held is False
    with other_process(path) as (_, said):
        assert said == "held"


def test_a_forked_child_never_holds_its_parents_lock(tmp_path):
    path = tmp_path / "job.lock"
    parent = HostSingleton(path)
    assert parent.acquire()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's exit handlers
        answer = f"{int(parent.held)}{int(parent.acquire())}"
        os.write(write, answer.encode())
        os._exit(0)
    os.close(write)
    answer = os.read(read, 2).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == "00", "the child believed it held the lock, or took it while the parent held it"
    assert parent.held and holder(path) == os.getpid()
    parent.release()


def test_without_a_folder_the_process_is_the_host():
    singleton = HostSingleton(None)
    assert singleton.acquire() and singleton.held


@pytest.mark.parametrize("text", ["", "not a pid\n"])
def test_holder_reads_no_pid_from_an_empty_or_foreign_file(tmp_path, text):
    path = tmp_path / "job.lock"
    path.write_text(text)
    assert holder(path) is None
    assert holder(tmp_path / "missing.lock") is None
