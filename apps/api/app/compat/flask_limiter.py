"""flask-limiter internals the rate limits rely on.

`Limiter.init_app` registers a before_request, an after_request (where conditional
deductions happen) and a teardown hook for the whole app, which cost every request (the
hot path included) a search for a limit it does not have. Only one blueprint has limited
views, so `move_request_hooks` moves the three to that blueprint: they are found by
being bound to the limiter, directly or through functools.partial.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flask import Flask
from flask_limiter import Limiter

from . import require

DISTRIBUTION = "flask-limiter"
CHECKED = ">=4.1,<4.2"
REQUEST_HOOKS = 3


def _is_limiter_hook(hook: Callable, limiter: Limiter) -> bool:
    if getattr(hook, "__self__", None) is limiter:
        return True
    return isinstance(hook, functools.partial) and hook.args[:1] == (limiter,)


def move_request_hooks(app: Flask, limiter: Limiter, blueprint: str) -> None:
    """Make the limiter's app-wide request hooks run only for `blueprint`'s requests.

    Raises IncompatibleVersion unless exactly the three hooks were found.
    """
    moved = 0
    for hooks in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs):
        for hook in [h for h in hooks.get(None, []) if _is_limiter_hook(h, limiter)]:
            hooks[None].remove(hook)
            hooks.setdefault(blueprint, []).append(hook)
            moved += 1
    require(moved == REQUEST_HOOKS, DISTRIBUTION, f"{REQUEST_HOOKS} app-wide request hooks (found {moved})")


def verify() -> None:
    """Raise IncompatibleVersion unless a fresh limiter's hooks are found and moved as relied on."""
    app = Flask(__name__)
    limiter = Limiter(key_func=lambda: "verify", storage_uri="memory://", app=app)
    move_request_hooks(app, limiter, "verify")
    require(
        all(
            not [h for h in hooks.get(None, []) if _is_limiter_hook(h, limiter)]
            for hooks in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
        ),
        DISTRIBUTION,
        "request hooks that can be moved off the app",
    )
