"""SQL for idempotency keys: the lock that serialises one key, and the stored replies.

Every function runs inside the caller's transaction() block (the helpers join it), so
the reply is stored in the same transaction as the write it answers.
"""

from __future__ import annotations

import random
from typing import Any

from psycopg2.extras import Json

from .database import execute_query_one, execute_write

# About one stored reply in this many also deletes expired ones, so the table stays small.
CLEANUP_EVERY = 200


def try_lock(user_id: int, key: str) -> bool:
    """Take the key's lock until the transaction ends; return False at once if another request holds it."""
    row = execute_query_one(
        "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0)) AS locked", (f"idempotency:{user_id}:{key}",)
    )
    return row["locked"]


def find_reply(user_id: int, key: str) -> dict[str, Any] | None:
    """Return the unexpired stored reply for the key (fingerprint, status, body, headers), or None."""
    return execute_query_one(
        "SELECT fingerprint, status, body, headers FROM idempotency_keys"
        " WHERE user_id = %s AND key = %s AND expires_at > now()",
        (user_id, key),
    )


def store_reply(
    user_id: int, key: str, fingerprint: bytes, status: int, body: bytes, headers: dict[str, str], ttl: int
) -> None:
    """Store the reply to the key's request for `ttl` seconds, replacing an expired one."""
    if random.randrange(CLEANUP_EVERY) == 0:  # noqa: S311 (spread, not secrecy)
        execute_write("DELETE FROM idempotency_keys WHERE expires_at < now()")
    execute_write(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, status, body, headers, expires_at)"
        " VALUES (%(user_id)s, %(key)s, %(fingerprint)s, %(status)s, %(body)s, %(headers)s,"
        "  now() + make_interval(secs => %(ttl)s))"
        " ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status,"
        "  body = excluded.body, headers = excluded.headers, created_at = excluded.created_at,"
        "  expires_at = excluded.expires_at",
        {
            "user_id": user_id,
            "key": key,
            "fingerprint": fingerprint,
            "status": status,
            "body": body,
            "headers": Json(headers),
            "ttl": ttl,
        },
    )


def purge_expired(batch: int) -> int:
    """Delete up to `batch` expired stored replies in one statement; return how many went."""
    return execute_write(
        "DELETE FROM idempotency_keys WHERE (user_id, key) IN (SELECT user_id, key FROM idempotency_keys"
        " WHERE expires_at < now() LIMIT %(batch)s FOR UPDATE SKIP LOCKED)",
        {"batch": batch},
    )
