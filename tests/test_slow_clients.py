"""Slow clients against the real server (issue 11, findings 1 and 8).

Hundreds of connections that send a request a byte or a header line at a time, or take a
reply and never hang up, must not stop anyone else: /api/health and a domain read answer
within a second throughout, each slow connection is cut off within the request-read
deadline (HTTP_REQUEST_READ_TIMEOUT_SECONDS) plus a margin, and no worker is restarted.
Requests the server itself refuses (malformed, over a limit) get the API's JSON error
shape with its security headers, like every reply of the app.

The server is a fixture parametrised over how to start one, so another server (granian)
can be put through the same tests by adding it to SERVERS.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from apps.api.app.security import SECURITY_HEADERS
from tests.support.gunicorn import start_gunicorn, stop_gunicorn, worker_pids
from tests.support.slow_clients import (
    Prober,
    SlowAttack,
    SlowConnection,
    header_line,
    one_byte,
    parse_reply,
    raw_exchange,
    slow_attack,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

READ_TIMEOUT = 2.0  # HTTP_REQUEST_READ_TIMEOUT_SECONDS for these tests
SLOW_CLIENTS = 200
ATTACK_SECONDS = 3 * READ_TIMEOUT  # each slot is cut off and reopened about three times
ANSWER_WITHIN = 1.0
# The worker looks at its deadlines about once a second, and this 2-core machine is shared.
CUT_OFF_MARGIN = 2.0


@dataclass
class Server:
    """A running server under test: its port, its worker pids, and stop() (idempotent) for its log."""

    port: int
    workers: Callable[[], set[int]]
    _stop: Callable[[], str]
    _log: list[str] = field(default_factory=list)

    def stop(self) -> str:
        """Stop the server (once) and return what it logged."""
        if not self._log:
            self._log.append(self._stop())
        return self._log[0]


def _gunicorn(database_url: str, **settings: object) -> Server:
    process, port = start_gunicorn(database_url, **settings)
    return Server(port, lambda: worker_pids(process), lambda: stop_gunicorn(process))


# How to start each server the tests run against; granian's issue adds its own.
SERVERS: dict[str, Callable[..., Server]] = {"gunicorn": _gunicorn}


@pytest.fixture(params=sorted(SERVERS))
def server(request, database_url) -> Iterator[Server]:
    """The server under test, with a short request-read deadline; stopped after the test."""
    server = SERVERS[request.param](database_url, HTTP_REQUEST_READ_TIMEOUT_SECONDS=READ_TIMEOUT)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def probes(make_customer, admin_headers) -> list[tuple[str, str, dict[str, str]]]:
    """What must keep answering: liveness, and an authenticated domain read."""
    customer = make_customer()
    return [("GET", "/api/health", {}), ("GET", f"/api/customers/{customer['id']}", admin_headers)]


def _attack_while_probing(server: Server, probes, first: bytes, **options: object) -> tuple[list, SlowAttack]:
    """Hold SLOW_CLIENTS slow connections for ATTACK_SECONDS while probing; return the probes and the attack."""
    before = server.workers()
    prober = Prober(server.port, probes)
    with prober.running(), slow_attack(server.port, SLOW_CLIENTS, first, **options) as attack:
        time.sleep(ATTACK_SECONDS)
    assert server.workers() == before, "a worker was restarted"
    return prober.replies, attack


def _record(record_property, replies, connections: list[SlowConnection]) -> None:
    """Keep the figures docs/RELIABILITY.md quotes (pytest --junitxml shows them)."""
    held = sorted(c.held for c in connections if c.held is not None)
    record_property("slow_connections", len(connections))
    record_property("closed_by_server", len(held))
    if held:
        record_property("held_seconds_min_median_max", (held[0], held[len(held) // 2], held[-1]))
    record_property("probes", len(replies))
    record_property("slowest_probe_seconds", max((r.seconds for r in replies), default=None))


def _assert_answered_in_time(replies) -> None:
    slow = [(r.path, r.status, r.error, round(r.seconds, 2)) for r in replies if not r.ok or r.seconds > ANSWER_WITHIN]
    assert len(replies) >= 10, f"only {len(replies)} probes were answered"
    assert not slow, f"{len(slow)} of {len(replies)} probes failed or took over {ANSWER_WITHIN} s: {slow[:10]}"
    assert {r.path for r in replies} >= {"/api/health"} and any(r.path.startswith("/api/customers/") for r in replies)


def _assert_cut_off_in_time(attack: SlowAttack) -> list[SlowConnection]:
    """Every slow connection open long enough was closed by the server within the deadline and margin."""
    allowed = READ_TIMEOUT + CUT_OFF_MARGIN
    # A connection opened less than `allowed` before the attack stopped may rightly be open still.
    judged = [c for c in attack.connections if c.closed_by_server is not None or c.opened < attack.stopped - allowed]
    never = [c for c in judged if c.closed_by_server is None]
    late = sorted(round(c.held, 2) for c in judged if c.held is not None and c.held > allowed)
    assert not never, f"{len(never)} of {len(judged)} slow connections were never closed by the server"
    assert not late, f"{len(late)} slow connections were held over {allowed} s: {late[-10:]}"
    assert len(judged) >= SLOW_CLIENTS
    return judged


def test_two_hundred_one_byte_clients_hold_no_thread_and_are_cut_off(server, probes, record_property):
    replies, attack = _attack_while_probing(server, probes, one_byte())
    _record(record_property, replies, attack.connections)
    _assert_answered_in_time(replies)
    judged = _assert_cut_off_in_time(attack)
    # They had started a request: each is told why before the server hangs up.
    assert {c.status for c in judged} == {408}
    body = json.loads(judged[0].received.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "request_timeout"
    assert "closed the connection from 127.0.0.1" in server.stop()


def test_two_hundred_header_dribblers_hold_no_thread_and_are_cut_off(server, probes, record_property):
    replies, attack = _attack_while_probing(
        server, probes, b"GET /api/health HTTP/1.1\r\nHost: x\r\n", dribble=header_line, interval=1.0
    )
    _record(record_property, replies, attack.connections)
    _assert_answered_in_time(replies)
    judged = _assert_cut_off_in_time(attack)
    assert {c.status for c in judged} == {408}


def test_two_hundred_clients_that_never_hang_up_do_not_stall_the_server(server, probes, record_property):
    # Each takes its reply (Connection: close) and keeps its end open: closing politely
    # must not mean waiting for the client.
    request = b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    replies, attack = _attack_while_probing(server, probes, request, reopen=False, keep_closed=True)
    _record(record_property, replies, attack.connections)
    _assert_answered_in_time(replies)
    assert [c.status for c in attack.connections] == [200] * SLOW_CLIENTS


# -- the server's own refusals: the API's JSON shape and headers (finding 8) --------------

_HEAD = b"Host: x\r\n"
REFUSED = {
    "request line over limit_request_line": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n" + _HEAD + b"\r\n", 414),
    "Content-Length and Transfer-Encoding": (
        b"POST /api/customers HTTP/1.1\r\n" + _HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        400,
    ),
    "invalid header name": (b"GET /api/health HTTP/1.1\r\n" + _HEAD + b"Bad Name: y\r\n\r\n", 400),
    "too many headers": (
        b"GET /api/health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(120)) + b"\r\n",
        431,
    ),
    "a head that never ends, over the header limits": (
        b"GET /api/health HTTP/1.1\r\n" + b"X-Big: " + b"y" * 8000 + b"\r\n" + b"X-More: " + b"y" * 900_000,
        431,
    ),
    "unknown transfer coding": (
        b"POST /api/customers HTTP/1.1\r\n" + _HEAD + b"Transfer-Encoding: zip\r\n\r\n",
        501,
    ),
    # The login reads its body before any check: gunicorn's reader failing inside the app was a 500.
    "malformed chunk size": (
        b"POST /api/auth/login HTTP/1.1\r\n" + _HEAD + b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        400,
    ),
    "forbidden trailer": (
        b"POST /api/auth/login HTTP/1.1\r\n" + _HEAD + b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nContent-Length: 5\r\n\r\n",
        400,
    ),
}


def test_requests_the_server_refuses_get_the_json_error_shape_and_security_headers(server):
    seen = {}
    for name, (request, _) in REFUSED.items():
        raw, closed = raw_exchange(server.port, request)
        status, headers, body = parse_reply(raw)
        document = json.loads(body) if headers.get("content-type") == "application/json" else None
        seen[name] = {
            "status": status,
            "shape": sorted(document["error"]) if document else body[:80],
            "security headers": all(headers.get(h.lower()) == v for h, v in SECURITY_HEADERS),
            "closed": closed and headers.get("connection") == "close",
        }
    expected = {
        name: {"status": status, "shape": ["code", "details", "message"], "security headers": True, "closed": True}
        for name, (_, status) in REFUSED.items()
    }
    assert seen == expected
