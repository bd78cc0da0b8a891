"""A few plain HTTP calls the harness makes itself: login, pool stats, walking the rentals cursor."""

from __future__ import annotations

import http.client
import json
import logging
import time
from typing import Any
from urllib.parse import quote

logger = logging.getLogger("bench")


class APIError(RuntimeError):
    """The API answered with an unexpected status."""


def call(
    port: int, method: str, path: str, *, token: str | None = None, body: Any = None, timeout: float = 30
) -> tuple[int, Any]:
    """Send one request to 127.0.0.1:port and return (status, parsed JSON or text)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = None
    if body is not None:
        payload = json.dumps(body)
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")


def login(port: int, email: str, password: str) -> str:
    """Return a bearer token from POST /api/auth/login; raise APIError otherwise."""
    status, body = call(port, "POST", "/api/auth/login", body={"email": email, "password": password})
    if status != 200 or not isinstance(body, dict) or "token" not in body:
        raise APIError(f"login answered {status}: {str(body)[:500]}")
    return body["token"]


def walk_rentals(port: int, token: str, rows: int) -> dict[str, Any]:
    """Follow /api/rentals' next_cursor until `rows` rows lie behind it; return the cursor and what it took.

    Pages of 100 (the API's maximum) get there in fewer requests; falls back to 50 if
    100 is refused. Returns {"cursor", "rows_skipped", "pages", "seconds", "page_size"}.
    """
    started = time.monotonic()
    for page_size in (100, 50):
        status, body = call(port, "GET", f"/api/rentals?limit={page_size}", token=token)
        if status == 200:
            break
    else:
        raise APIError(f"GET /api/rentals answered {status}: {str(body)[:500]}")
    skipped, pages = len(body["items"]), 1
    cursor = body.get("next_cursor")
    while cursor and skipped < rows:
        status, body = call(port, "GET", f"/api/rentals?limit={page_size}&cursor={quote(cursor, safe='')}", token=token)
        if status != 200:
            raise APIError(f"GET /api/rentals with a cursor answered {status}: {str(body)[:500]}")
        pages += 1
        skipped += len(body["items"])
        if body.get("next_cursor") is None:
            break
        cursor = body["next_cursor"]
    if not cursor:
        raise APIError("GET /api/rentals gave no next_cursor: the list is shorter than one page")
    return {
        "cursor": cursor,
        "rows_skipped": skipped,
        "pages": pages,
        "page_size": page_size,
        "seconds": round(time.monotonic() - started, 2),
    }


def pool_stats(port: int, token: str, samples: int = 8) -> dict[int, dict[str, Any]]:
    """Return /api/health/db's pool_stats per worker pid, asking a few times to reach each worker."""
    by_pid: dict[int, dict[str, Any]] = {}
    for _ in range(samples):
        status, body = call(port, "GET", "/api/health/db", token=token, timeout=10)
        if status in (200, 503) and isinstance(body, dict) and "pool_stats" in body:
            by_pid[body.get("pid", 0)] = body["pool_stats"]
    return by_pid
