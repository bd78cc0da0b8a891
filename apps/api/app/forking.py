"""One registry of what must happen in a child process right after a fork.

A forked child (a gunicorn worker) starts with copies of the parent's pools, locks and
buffers. Each module that holds such state registers a hook here; the hooks run in the
child, in registration order, before anything else runs there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

logger = logging.getLogger(__name__)

_hooks: list[Callable[[], None]] = []


def after_fork_in_child(hook: Callable[[], None]) -> Callable[[], None]:
    """Register `hook` to run in every child process right after a fork; return it (a decorator)."""
    _hooks.append(hook)
    return hook


def _run_hooks() -> None:
    for hook in _hooks:
        try:
            hook()
        except Exception:  # one failing hook must not keep the others from running
            logger.exception("after-fork hook %s failed", getattr(hook, "__qualname__", hook))


os.register_at_fork(after_in_child=_run_hooks)
