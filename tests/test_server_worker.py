"""The request-buffering worker (apps/api/server/worker.py): when a request counts as whole, and
what gunicorn gives that must still work with it: bodies in pieces, chunked bodies,
`Expect: 100-continue`, keep-alive and pipelining, the 413 for a body over the limit, a
request on its way when the worker stops, and the settings it refuses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from gunicorn.config import Config

from apps.api.server.worker import RequestFraming, Verdict, unsupported_settings
from devtools.embedded_pg import free_port
from tests.helpers import app_config
from tests.support.gunicorn import GUNICORN_COMMAND, ROOT, start_gunicorn, stop_gunicorn
from tests.support.slow_clients import parse_reply, raw_exchange

HEAD_LIMIT = 1000
BODY_LIMIT = 100


def _framing() -> RequestFraming:
    return RequestFraming(HEAD_LIMIT, BODY_LIMIT, chunk_line_limit=50)


def _scan_byte_by_byte(data: bytes) -> list[Verdict]:
    framing, received, verdicts = _framing(), bytearray(), []
    for byte in data:
        received.append(byte)
        verdicts.append(framing.scan(received))
        if verdicts[-1] is not Verdict.INCOMPLETE:
            break
    return verdicts


FRAMED = {
    "no body": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Verdict.COMPLETE),
    "no headers": (b"GET / HTTP/1.1\r\n\r\n", Verdict.COMPLETE),
    "one leading empty line": (b"\r\nGET / HTTP/1.1\r\n\r\n", Verdict.COMPLETE),
    "Content-Length": (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", Verdict.COMPLETE),
    "Content-Length, any case, spaces": (b"POST / HTTP/1.1\r\ncOnTeNt-LeNgTh:  5 \r\n\r\nhello", Verdict.COMPLETE),
    "chunked": (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Verdict.COMPLETE),
    "chunked, extension and trailer": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        Verdict.COMPLETE,
    ),
    "Content-Length over the limit": (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", Verdict.TOO_LARGE),
    "chunked over the limit": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"x" * 100 + b"\r\n1\r\nx",
        Verdict.TOO_LARGE,
    ),
    "two lengths": (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", Verdict.MALFORMED),
    "length and chunked": (
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        Verdict.MALFORMED,
    ),
    "length not digits": (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", Verdict.MALFORMED),
    "coding not ending with chunked": (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", Verdict.MALFORMED),
    "bare LF": (b"GET / HTTP/1.1\n", Verdict.MALFORMED),
    "head over the limit": ((b"GET / HTTP/1.1\r\nX: " + b"y" * HEAD_LIMIT)[: HEAD_LIMIT + 1], Verdict.MALFORMED),
    "chunk size not hex": (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Verdict.BAD_BODY),
    "chunk without its CRLF": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxyz",
        Verdict.BAD_BODY,
    ),
    "chunk size line over the limit": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 49,
        Verdict.BAD_BODY,
    ),
}


@pytest.mark.parametrize(("data", "verdict"), FRAMED.values(), ids=FRAMED.keys())
def test_framing_decides_on_the_last_byte_needed_and_never_before(data, verdict):
    verdicts = _scan_byte_by_byte(data)
    assert verdicts[-1] is verdict
    assert len(verdicts) == len(data), "decided before the byte that decides"
    assert _framing().scan(bytearray(data)) is verdict


def test_framing_answers_100_continue_only_for_a_body_over_http_1_1():
    def expects(head: bytes) -> bool:
        framing = _framing()
        assert framing.scan(bytearray(head)) is Verdict.INCOMPLETE
        return framing.expects_continue

    assert expects(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert expects(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert not expects(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert not expects(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")


def test_unsupported_gunicorn_settings_are_named():
    cfg = Config()
    assert unsupported_settings(cfg) == []
    for name, value in [
        ("certfile", "cert.pem"),
        ("http_protocols", "h2,h1"),
        ("proxy_protocol", "v1"),
        ("limit_request_line", 0),
    ]:
        cfg.set(name, value)
    assert len(unsupported_settings(cfg)) == 4


# -- against a real gunicorn ---------------------------------------------------------------


def _exchange_in_steps(port: int, steps: list[tuple[bytes, float]], timeout: float = 10) -> bytes:
    """Send each piece after its pause on one connection; return everything until the server closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    received = b""
    try:
        for piece, pause in steps:
            time.sleep(pause)
            sock.sendall(piece)
        while chunk := sock.recv(65536):
            received += chunk
    finally:
        sock.close()
    return received


def _post(path: str, body: bytes, auth: str, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\n".encode()
        + extra
        + (b"" if b"Transfer-Encoding" in extra else b"Content-Length: %d\r\n" % len(body))
        + b"\r\n"
        + body
    )


@pytest.mark.slow
def test_what_gunicorn_gives_still_works(database_url, admin_headers, make_customer):
    process, port = start_gunicorn(database_url, HTTP_REQUEST_READ_TIMEOUT_SECONDS=3, MAX_CONTENT_LENGTH=2000)
    auth = admin_headers["Authorization"]
    customer = make_customer()
    try:
        # A body that arrives in three pieces, within the deadline.
        body = b'{"full_name": "Ada Lovelace"}'
        request = _post("/api/customers", body, auth)
        raw = _exchange_in_steps(port, [(request[:-20], 0), (request[-20:-5], 0.4), (request[-5:], 0.4)])
        assert parse_reply(raw)[0] == 201

        # Chunked.
        chunked = b"5\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % len(body[5:]) + body[5:] + b"\r\n0\r\n\r\n"
        raw, _ = raw_exchange(port, _post("/api/customers", chunked, auth, b"Transfer-Encoding: chunked\r\n"))
        assert parse_reply(raw)[0] == 201

        # Expect: 100-continue: one 100 before the body is sent, then the answer.
        request = _post("/api/customers", body, auth, b"Expect: 100-continue\r\n")
        head = request[: -len(body)]
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            sock.sendall(head)
            assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(body)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        finally:
            sock.close()
        assert parse_reply(raw)[0] == 201 and b"100 Continue" not in raw

        # A body over MAX_CONTENT_LENGTH is refused from its head alone: 413, then the server closes.
        raw, closed = raw_exchange(port, _post("/api/customers", b"", auth).replace(b"Length: 0", b"Length: 5000"))
        status, _headers, reply = parse_reply(raw)
        assert (status, json.loads(reply)["error"]["code"], closed) == (413, "payload_too_large", True)

        # Keep-alive and pipelining: three requests in one write, three answers, in order.
        read = f"GET /api/customers/{customer['id']} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode()
        last = read.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        raw, closed = raw_exchange(port, read + b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n" + last)
        assert raw.count(b"HTTP/1.1 200 OK") == 3 and closed
        assert raw.index(b'"full_name"') < raw.index(b'"uptime_seconds"') < raw.rindex(b'"full_name"')
    finally:
        output = stop_gunicorn(process)
    assert process.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_a_stopping_worker_serves_the_request_on_its_way_and_closes_idle_connections(database_url):
    process, port = start_gunicorn(database_url, WEB_CONCURRENCY=1, HTTP_REQUEST_READ_TIMEOUT_SECONDS=5)
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        started.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        started.sendall(b"\r\n")
        status, headers, _body = parse_reply(started.recv(65536))
        assert (status, headers["connection"]) == (200, "close")
        assert idle.recv(100) == b""  # closed without a word: it had not begun a request
        assert time.monotonic() - stopped_at < 5
    finally:
        idle.close()
        started.close()
        output = stop_gunicorn(process)
    assert process.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_gunicorn_refuses_settings_the_worker_cannot_serve(database_url):
    settings = app_config(database_url, PORT=free_port(), GUNICORN_THREADS=4)
    env = {**os.environ, **settings, "GUNICORN_CMD_ARGS": "--limit-request-line 0"}
    result = subprocess.run(GUNICORN_COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "does not support limit_request_line 0" in result.stdout + result.stderr
    assert "Booting worker" not in result.stdout + result.stderr
