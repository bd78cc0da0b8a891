"""Requests no HTTP library sends, written byte by byte to a real gunicorn: chunked bodies past
MAX_CONTENT_LENGTH, and paths that try to forge log lines."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from urllib.parse import quote

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


# -- log lines ---------------------------------------------------------------------------

# What a path tries to end its log line with (or to hide it behind).
BREAKS = [
    "\n",
    "\r",
    "\r\n",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1e",
    "\x85",  # NEL, a C1 control
    "\u2028",  # LINE SEPARATOR
    "\u2029",  # PARAGRAPH SEPARATOR
    "\x1b[2K\r",  # ANSI: erase the line, back to its start
    "\x9b2K",  # the same with the C1 control sequence introducer
    "\x7f",
    "\x00",
    "\t",
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\\n",  # a backslash and an n, sent as such
]
# How the request line writes each: as a Python string literal would, a backslash too (so
# `\n` in a line is never a sent backslash and n), and a space as \x20 (so a path is one
# field of the line and cannot fake the status after it).
ESCAPES = {
    " ": "\\x20",
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\x00": "\\x00",
    "\x0b": "\\x0b",
    "\x0c": "\\x0c",
    "\x1b": "\\x1b",
    "\x1c": "\\x1c",
    "\x1e": "\\x1e",
    "\x7f": "\\x7f",
    "\x85": "\\x85",
    "\x9b": "\\x9b",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
    "\u202e": "\\u202e",
}
FORGED = {
    "text": "2026-01-01 00:00:00,000 INFO [1] apps.api.request: GET /f 200 1.0ms (pool wait 0.0ms, request forged)",
    "json": '{"time":"2026-01-01 00:00:00,000","level":"INFO","logger":"apps.api.request","request_id":"forged"}',
}
TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[\d+\] \S+: ")
TEXT_REQUEST = re.compile(
    r"apps\.api\.request: (?P<method>\S+) (?P<path>\S+) (?P<status>\d{3}) [\d.]+ms "
    r"\(pool wait [\d.]+ms, request (?P<request_id>\S+)\)$"
)


def raw_get(port: int, target: bytes, request_id: str) -> int:
    """Send GET `target` (bytes as they go on the wire) with an X-Request-ID; return the status."""
    request = b"GET %s HTTP/1.1\r\nHost: test\r\nX-Request-ID: %s\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request % (target, request_id.encode()))
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_paths_cannot_forge_or_break_log_lines(database_url, log_format):
    process, port = start_gunicorn(database_url, LOG_FORMAT=log_format, LOG_LEVEL="info", WEB_CONCURRENCY=1)
    sent: dict[str, str] = {}  # request id -> the path the app saw
    try:
        for n, brk in enumerate(BREAKS):
            path = f"/api/x{brk}{FORGED[log_format]}"
            sent[f"forge-{n}"] = path
            assert raw_get(port, quote(path).encode(), f"forge-{n}") == 404
        for n, (target, path) in enumerate(
            [
                (b"/api/customers/%D9%A1", "/api/customers/\u0661"),  # also no route: ids are ASCII digits
                (b"/api/x%ff%fe", "/api/x\ufffd\ufffd"),  # not UTF-8: werkzeug's replacement characters
                (b"/api/%E2%80%A8%E2%80%A9%C2%85", "/api/\u2028\u2029\x85"),
            ]
        ):
            sent[f"other-{n}"] = path
            assert raw_get(port, target, f"other-{n}") == 404
        # Raw control bytes in the request line: the server refuses it (400) and logs that it did.
        assert raw_get(port, b"/api/x\x85" + FORGED[log_format].encode().replace(b" ", b"%20"), "raw") == 400
    finally:
        output = stop_gunicorn(process)
    lines = output.splitlines()  # str.splitlines: every Unicode line break, as a log reader might
    for line in lines:
        assert line.isprintable(), f"unescaped control or separator in {line!r}"
    if log_format == "text":
        assert all(TEXT_RECORD.match(line) for line in lines), [line for line in lines if not TEXT_RECORD.match(line)]
        requests = [line for line in lines if " apps.api.request: " in line]
        assert all(TEXT_REQUEST.search(line) for line in requests), [r for r in requests if not TEXT_REQUEST.search(r)]
        logged = [TEXT_REQUEST.search(line).groupdict() for line in requests]
    else:
        records = [json.loads(line) for line in lines]  # raises on a line that is not one whole object
        logged = [record for record in records if record.get("logger") == "apps.api.request"]
    by_id: dict[str, list[dict]] = {}
    for record in logged:
        by_id.setdefault(record["request_id"], []).append(record)
    assert "forged" not in by_id, by_id["forged"]
    for request_id, path in sent.items():
        assert len(by_id.get(request_id, [])) == 1, (request_id, by_id.get(request_id))
        record = by_id[request_id][0]
        escaped = "".join(ESCAPES.get(char, char) for char in path)
        if log_format == "text":
            assert record["path"] == escaped, (request_id, record["path"], escaped)
        else:
            # The JSON fields keep the exact path (escaped on the wire); the message is the text line's.
            assert record["path"] == path and record["method"] == "GET", (request_id, record)
            assert record["message"].startswith(f"GET {escaped} 404 "), (request_id, record["message"])
    # The server's worker logs what it refused without echoing the request line.
    assert any("refused a request from 127.0.0.1: 400 (InvalidRequestLine)" in line for line in lines), output[-2000:]
