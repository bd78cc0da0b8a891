"""Where the app reaches into a library's internals: one module per library.

Each module names the versions it was checked against (`CHECKED`, a PEP 440 specifier)
and offers `verify()`, which raises `IncompatibleVersion` with a sentence when the
installed release no longer has what the module relies on. tests/test_compat.py runs
both for every module, so an upgrade that breaks one fails loudly there first.
"""

from __future__ import annotations

from importlib import metadata


class IncompatibleVersion(RuntimeError):
    """An installed library no longer has the internals this app relies on."""


def require(condition: bool, distribution: str, what: str) -> None:
    """Raise IncompatibleVersion naming `distribution`'s installed release unless `condition` holds."""
    if not condition:
        try:
            release = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            release = "(installed under another name)"
        raise IncompatibleVersion(
            f"{distribution} {release} no longer has {what}; see apps/api/app/compat/ for what the app relies on"
        )
