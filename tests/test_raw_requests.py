"""Requests no HTTP library sends, written byte by byte to a real gunicorn: chunked bodies past
MAX_CONTENT_LENGTH, and paths that try to forge log lines."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest

from tests.support.gunicorn import start_gunicorn, stop_gunicorn

pytestmark = pytest.mark.slow

LIMIT = 64 * 1024  # MAX_CONTENT_LENGTH of these tests
SECURITY_HEADERS = ("x-content-type-options", "x-frame-options", "content-security-policy", "cache-control")


def read_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 reply with a Content-Length from `sock`; return status, headers (lower-case names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a whole reply: {data[:300]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed inside the reply's body: {body[:300]!r}")
        body += chunk
    return int(status_line.split()[1]), headers, body


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` whole on a new connection and read the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return read_reply(sock)


def post_head(path: str, token: str, framing: str) -> bytes:
    """The request line and headers of a JSON POST, the body framed by `framing` (a header line)."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def chunked(data: bytes, size: int = 8192) -> bytes:
    """`data` in chunked transfer coding, with the last chunk."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def assert_413(status: int, headers: dict[str, str], body: bytes, context: object) -> None:
    """Assert a 413 in the JSON error shape with the security headers."""
    assert status == 413, (context, status, body[:300])
    assert headers["content-type"] == "application/json", context
    assert json.loads(body)["error"]["code"] == "payload_too_large", (context, body)
    assert all(name in headers for name in SECURITY_HEADERS), (context, headers)


@pytest.fixture
def limited_server(database_url):
    """gunicorn with MAX_CONTENT_LENGTH = LIMIT, one worker."""
    process, port = start_gunicorn(database_url, MAX_CONTENT_LENGTH=LIMIT, WEB_CONCURRENCY=1)
    try:
        yield port
    finally:
        stop_gunicorn(process)


def test_a_chunked_body_past_the_limit_gets_413_like_one_with_content_length(limited_server, admin_headers):
    port, token = limited_server, admin_headers["Authorization"].removeprefix("Bearer ")
    for path, document in [
        ("/api/customers", {"full_name": "Too big"}),
        ("/api/auth/login", {"email": "nobody@example.com", "password": "x"}),
    ]:
        # A whole JSON document, then whitespace past the limit: cut off at the limit, it
        # still parsed, and the customer was created.
        body = json.dumps(document).encode().ljust(LIMIT + 1)
        assert_413(*exchange(port, post_head(path, token, f"Content-Length: {len(body)}") + body), (path, "length"))
        assert_413(*exchange(port, post_head(path, token, "Transfer-Encoding: chunked") + chunked(body)), path)
        # At the limit exactly, the body is read whole and served.
        exact = json.dumps(document).encode().ljust(LIMIT)
        status, _, reply = exchange(port, post_head(path, token, "Transfer-Encoding: chunked") + chunked(exact))
        assert status == (201 if path == "/api/customers" else 401), (path, reply[:300])


def test_a_chunked_body_far_past_the_limit_gets_413_before_it_is_sent_and_the_connection_closed(
    limited_server, admin_headers
):
    port, token = limited_server, admin_headers["Authorization"].removeprefix("Bearer ")
    total = 1000 * LIMIT  # 64 MiB, far more than the kernel's socket buffers hold
    chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = [0]
    stopped: list[OSError] = []

    def send_body() -> None:
        try:
            sock.sendall(post_head("/api/customers", token, "Transfer-Encoding: chunked"))
            sock.sendall(chunked(b'{"full_name": "x"}')[: -len(b"0\r\n\r\n")])
            while sent[0] < total:
                sock.sendall(chunk)
                sent[0] += 16384
            sock.sendall(b"0\r\n\r\n")
        except OSError as exc:  # the server closed the connection
            stopped.append(exc)

    sender = threading.Thread(target=send_body, daemon=True)
    started = time.monotonic()
    sender.start()
    try:
        status, headers, body = read_reply(sock)
        replied_after, sent_before_reply = time.monotonic() - started, sent[0]
        assert_413(status, headers, body, "64 MiB body")
        assert sent_before_reply < total, "the reply waited for the whole body"
        # Then the server closes the connection rather than reading the rest: the client
        # sees the end of the stream, and its sending fails before the body is out.
        # (A reset also tells the end: the client was still sending.)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            assert sock.recv(65536) == b"", "more than one reply"
        sender.join(timeout=15)
        assert not sender.is_alive(), "the client could still send 15 s after the reply"
        closed_after = time.monotonic() - started
    finally:
        sock.close()
        sender.join(timeout=5)
    assert stopped and isinstance(stopped[0], BrokenPipeError | ConnectionResetError), stopped
    assert sent[0] < total
    print(
        f"chunked body of {total:,} bytes, limit {LIMIT:,}: 413 after {replied_after:.2f} s and {sent_before_reply:,} "
        f"bytes sent; sending failed ({type(stopped[0]).__name__}) after {closed_after:.2f} s and {sent[0]:,} bytes"
    )
    # The worker goes on serving.
    status, _, _ = exchange(port, b"GET /api/health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    assert status == 200
