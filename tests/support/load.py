"""HTTP load on loopback: one-shot requests, bursts, a load generator, and the rows it books.

Each request goes on a fresh connection (so the kernel spreads them over gunicorn's workers)
and comes back as a Reply, complete or not; the load books date ranges that never overlap,
so every booking stands alone and can be checked against the table afterwards.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from werkzeug.serving import make_server

from apps.api.app import create_app
from tests.helpers import HEALTH_HEADERS, app_config, bearer, insert_row

# Bookings start here, two days apart per product, so no two ever overlap.
FIRST_DAY = datetime.date(2031, 1, 1)


# -- HTTP on loopback ------------------------------------------------------------------


@dataclass
class Reply:
    """One request as the client saw it; status None when no complete reply came."""

    kind: str
    method: str
    path: str
    started: float
    connected: float | None = None
    ended: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    body: Any = None
    error: str | None = None
    booking: dict[str, Any] | None = None

    @property
    def seconds(self) -> float:
        """Return how long the client waited."""
        return self.ended - self.started

    @property
    def code(self) -> str | None:
        """Return the error code of a JSON error reply, or None."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"].get("code")
        return None

    @property
    def ok(self) -> bool:
        """Return True for a 2xx reply."""
        return self.status is not None and 200 <= self.status < 300


def send(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
    *,
    kind: str = "read",
    timeout: float = 30.0,
) -> Reply:
    """Send one request on a fresh connection (so the kernel spreads them over the workers)."""
    reply = Reply(kind, method, path, time.monotonic(), booking=body if kind == "write" else None)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.connect()
        reply.connected = time.monotonic()
        payload = json.dumps(body).encode() if body is not None else None
        extra = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers={"Connection": "close", **headers, **extra})
        response = conn.getresponse()
        raw = response.read()
        is_json = (response.getheader("Content-Type") or "").startswith("application/json")
        reply.body = json.loads(raw) if is_json else raw.decode(errors="replace")
        reply.status = response.status
        reply.retry_after = response.getheader("Retry-After")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reply.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
        reply.ended = time.monotonic()
    return reply


def send_all(port: int, requests: list[tuple[str, str, dict, dict | None, str]]) -> list[Reply]:
    """Send requests at once, one thread each; return their replies in the same order."""
    replies: list[Reply | None] = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def one(index: int) -> None:
        method, path, headers, body, kind = requests[index]
        start.wait()
        replies[index] = send(port, method, path, headers, body, kind=kind)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(reply is not None for reply in replies), "a client thread did not finish"
    return replies  # type: ignore[return-value]


class Burst:
    """send_all in a background thread: start it, do something meanwhile, then take its replies."""

    def __init__(self, port: int, requests: list[tuple[str, str, dict, dict | None, str]]) -> None:
        self.replies: list[Reply] = []
        self._thread = threading.Thread(target=lambda: self.replies.extend(send_all(port, requests)), daemon=True)
        self._thread.start()

    def result(self, timeout: float = 60.0) -> list[Reply]:
        """Wait for every reply and return them."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the burst did not finish"
        return self.replies


@contextlib.contextmanager
def serve(app) -> Iterator[int]:
    """Serve `app` over real HTTP on loopback from werkzeug's threaded server (a thread per request)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- what the load books and reads -----------------------------------------------------


@dataclass
class World:
    """A staff user's token, customers and products; hands out bookings that never overlap."""

    user_id: int
    headers: dict[str, str]
    customers: list[int]
    products: dict[int, int]  # id -> daily_rate_cents
    slots: Iterator[int] = field(default_factory=itertools.count)

    def next_booking(self) -> dict[str, Any]:
        """Return the body of a booking no other booking overlaps (1 or 2 days in its own slot)."""
        n = next(self.slots)  # itertools.count is atomic under the GIL
        products = list(self.products)
        start = FIRST_DAY + datetime.timedelta(days=2 * (n // len(products)))
        return {
            "customer_id": self.customers[n % len(self.customers)],
            "product_id": products[n % len(products)],
            "start_date": start.isoformat(),
            "end_date": (start + datetime.timedelta(days=1 + n % 2)).isoformat(),
        }


def _staff_headers(user_id: int) -> dict[str, str]:
    """Return bearer headers for a staff user, signed with the test SECRET_KEY gunicorn gets too."""
    app = create_app(app_config("postgresql://chaos@127.0.0.1/unused"))
    return bearer(app, {"id": user_id, "role": "staff"})


def seed_world(conn: psycopg2.extensions.connection, customers: int = 8, products: int = 16) -> World:
    """Insert a staff user, customers and products (autocommit connection); return the World."""
    user = insert_row(conn, "users", email="chaos@example.com", password_hash="unused", full_name="Chaos", role="staff")
    customer_ids = [
        insert_row(conn, "customers", full_name=f"Chaos Customer {n}", email=f"chaos{n}@example.com")["id"]
        for n in range(customers)
    ]
    rates = {}
    for n in range(products):
        row = insert_row(
            conn, "products", sku=f"CHAOS-{n:03d}", name=f"Chaos {n}", category="tools", daily_rate_cents=1000 + 7 * n
        )
        rates[row["id"]] = row["daily_rate_cents"]
    return World(user["id"], _staff_headers(user["id"]), customer_ids, rates)


def read_request(world: World, rng: random.Random) -> tuple[str, str, dict, None, str]:
    """Return a customer read or a rentals list read."""
    customer = rng.choice(world.customers)
    if rng.random() < 0.5:
        return "GET", f"/api/customers/{customer}", world.headers, None, "read"
    return "GET", f"/api/rentals?customer_id={customer}&limit=5", world.headers, None, "read"


class LoadGenerator:
    """Threads sending reads, bookings and health checks to one port, bounded in count and time.

    Each thread sends one request at a time on a fresh connection, without pause; a
    booking never overlaps another, so each write stands alone.
    """

    def __init__(
        self,
        port: int,
        world: World,
        *,
        threads: int = 6,
        write_share: float = 0.4,
        health_share: float = 0.15,
        max_seconds: float = 120.0,
        max_requests: int = 100_000,
    ) -> None:
        self.port = port
        self.world = world
        self.write_share = write_share
        self.health_share = health_share
        self.replies: list[Reply] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._budget = iter(range(max_requests))
        self._threads = [
            threading.Thread(target=self._run, args=(random.Random(n),), name=f"load-{n}", daemon=True)
            for n in range(threads)
        ]

    def _run(self, rng: random.Random) -> None:
        while not self._halt.is_set() and time.monotonic() < self._deadline and next(self._budget, None) is not None:
            roll = rng.random()
            if roll < self.write_share:
                reply = send(
                    self.port, "POST", "/api/rentals", self.world.headers, self.world.next_booking(), kind="write"
                )
            elif roll < self.write_share + self.health_share:
                reply = send(self.port, "GET", "/api/health/db", HEALTH_HEADERS, kind="health")
            else:
                method, path, headers, _, kind = read_request(self.world, rng)
                reply = send(self.port, method, path, headers, kind=kind)
            with self._lock:
                self.replies.append(reply)

    def start(self) -> LoadGenerator:
        """Start sending."""
        for thread in self._threads:
            thread.start()
        return self

    def halt(self) -> None:
        """Send no new request; those in flight go on."""
        self._halt.set()

    def stop(self) -> list[Reply]:
        """Stop sending, wait for the requests in flight, return every reply by start time."""
        self.halt()
        for thread in self._threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self._threads), "a load thread hung"
        return sorted(self.replies, key=lambda r: r.started)

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
