"""Slow clients on real sockets: many connections that send a request a byte or a line at a
time (or take a reply and never close), kept up from one thread, and a prober that times
ordinary requests while they run.

Each slow connection is a `SlowConnection` record: when it opened, when the server closed
it (EOF or reset) and what the server sent; the attack stops by closing whatever is left.
"""

from __future__ import annotations

import contextlib
import itertools
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tests.support.load import Reply, send


@dataclass
class SlowConnection:
    """One slow client's connection as the client saw it."""

    opened: float
    closed_by_server: float | None = None
    received: bytes = b""
    sent: int = 0

    @property
    def held(self) -> float | None:
        """Return how long the server kept the connection open, or None if it never closed it."""
        return None if self.closed_by_server is None else self.closed_by_server - self.opened

    @property
    def status(self) -> int | None:
        """Return the status of the reply the server sent before closing, or None."""
        if not self.received.startswith(b"HTTP/1.1 "):
            return None
        return int(self.received[9:12])


@dataclass
class SlowAttack:
    """`count` slow connections kept open (reopened as the server closes them), in a thread.

    Each connection sends `first` at once, then `dribble(n)` every `interval` seconds
    (n = 0, 1, ...) unless `dribble` is None. With `keep_closed`, a connection the server
    closed is not closed by the client until stop(): a client that never hangs up.
    """

    port: int
    count: int
    first: bytes
    dribble: Callable[[int], bytes] | None = None
    interval: float = 1.0
    reopen: bool = True
    keep_closed: bool = False
    connections: list[SlowConnection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._kept: list[socket.socket] = []
        self.error: BaseException | None = None
        self.stopped = 0.0

    def start(self) -> SlowAttack:
        """Open the connections and keep them going until stop(); return once all are open."""
        self._thread.start()
        assert self._ready.wait(30), "the slow connections did not all open"
        return self

    def stop(self) -> list[SlowConnection]:
        """Close every connection still open; return every connection's record."""
        self.stopped = time.monotonic()
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the slow clients' thread did not stop"
        if self.error is not None:
            raise self.error
        return self.connections

    def _open(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        record = SlowConnection(time.monotonic())
        sock.sendall(self.first)
        record.sent = 1
        sock.setblocking(False)
        self.connections.append(record)
        self._selector.register(sock, selectors.EVENT_READ, record)

    def _close(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        sock.close()

    def _on_readable(self, sock: socket.socket, record: SlowConnection) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # reset by the server: closed as well
        if data:
            record.received += data
            return
        record.closed_by_server = time.monotonic()
        if self.keep_closed:
            self._selector.unregister(sock)
            self._kept.append(sock)
        else:
            self._close(sock)
        if self.reopen and not self._stop.is_set():
            self._open()

    def _send_dribbles(self, now: float) -> None:
        for key in list(self._selector.get_map().values()):
            record: SlowConnection = key.data
            if now - record.opened >= record.sent * self.interval:
                with contextlib.suppress(OSError):  # closed meanwhile: the next read tells
                    key.fileobj.send(self.dribble(record.sent - 1))  # type: ignore[union-attr, misc]
                record.sent += 1

    def _run(self) -> None:
        try:
            for _ in range(self.count):
                self._open()
            self._ready.set()
            while not self._stop.is_set():
                for key, _ in self._selector.select(timeout=0.05):
                    self._on_readable(key.fileobj, key.data)  # type: ignore[arg-type]
                if self.dribble is not None:
                    self._send_dribbles(time.monotonic())
        except BaseException as exc:
            self.error = exc
            self._ready.set()
        finally:
            for key in list(self._selector.get_map().values()):
                self._close(key.fileobj)  # type: ignore[arg-type]
            self._selector.close()
            for sock in self._kept:
                sock.close()


@contextlib.contextmanager
def slow_attack(port: int, count: int, first: bytes, **options: object) -> Iterator[SlowAttack]:
    """Run a SlowAttack for the block; its connections are closed when the block ends, also on failure."""
    attack = SlowAttack(port, count, first, **options).start()  # type: ignore[arg-type]
    try:
        yield attack
    finally:
        attack.stop()


def one_byte(_: int = 0) -> bytes:
    """Return the one byte a one-byte client sends."""
    return b"G"


def header_line(n: int) -> bytes:
    """Return the n-th header line a dribbling client sends (it never sends the empty line)."""
    return b"X-Dribble-%d: %d\r\n" % (n, n)


@dataclass
class Prober:
    """Sends each of `requests` (method, path, headers) in turn, each on a new connection, in a
    thread, until stopped; keeps every reply."""

    port: int
    requests: list[tuple[str, str, dict[str, str]]]
    pause: float = 0.1
    replies: list[Reply] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for method, path, headers in itertools.cycle(self.requests):
            if self._stop.is_set():
                return
            # A generous client timeout: the assertion is on the time measured, and a
            # request that hangs must show up as slow, not vanish as an error.
            self.replies.append(send(self.port, method, path, headers, timeout=10))
            time.sleep(self.pause)

    @contextlib.contextmanager
    def running(self) -> Iterator[Prober]:
        """Probe for the duration of the block."""
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(30)
            assert not self._thread.is_alive(), "the prober did not stop"


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send `data` on a new connection and read until the server closes it.

    Return what the server sent and whether it closed the connection within `timeout`.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    received = b""
    closed = False
    try:
        sock.sendall(data)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            received += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    finally:
        sock.close()
    return received, closed


def parse_reply(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split the first raw HTTP/1.1 reply in `raw` into status, headers (names in lower case) and body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return int(lines[0].split(" ")[1]), headers, body
