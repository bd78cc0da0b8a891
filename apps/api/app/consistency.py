"""Consistency tokens: a WAL position, as the client sees it and as the database layer compares it.

A reply to a request that wrote carries `X-Consistency-Token`, the primary's WAL position
once its commit was made (models/database.py says how it is read). A client that sends it
back is served by a replica only once that replica has replayed at least that position.
The token is PostgreSQL's own text form of a pg_lsn (`16/B374D848`: two hexadecimal
halves of a 64-bit byte position); clients treat it as opaque and may only send it back.
This module imports nothing of the app.
"""

from __future__ import annotations

import re

HEADER = "X-Consistency-Token"
ENVIRON_KEY = "HTTP_X_CONSISTENCY_TOKEN"

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """Return the byte position of a pg_lsn text (`16/B374D848`); raise ValueError for anything else."""
    match = _LSN.fullmatch(text)
    if match is None:
        raise ValueError(f"{HEADER} must be a WAL position like 16/B374D848, as a reply gave it")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(position: int) -> str:
    """Return a byte position in pg_lsn's text form, the token's form."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"
