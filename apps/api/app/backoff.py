"""Capped exponential backoff: the one formula the pool's reconnects, job retries and mail retries share."""

from __future__ import annotations

# 2 ** 30 times any base is past every cap we use; beyond it the power would only risk overflow.
_MAX_DOUBLINGS = 30


def doubling_delay(base: float, cap: float, attempt: int) -> float:
    """Return the wait after failed attempt number `attempt` (1, 2, ...): `base` doubling per attempt, at most `cap`."""
    return min(cap, base * 2 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))
