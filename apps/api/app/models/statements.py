"""SQL pieces the model modules share: search patterns and the partial UPDATE."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from psycopg2 import sql


def like_pattern(text: str | None) -> str | None:
    """Return an ILIKE pattern matching `text` anywhere, its wildcards escaped; None for None."""
    if text is None:
        return None
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def update_by_id(
    table: str, row_id: int, changes: Mapping[str, Any], updatable: Iterable[str], returning: str
) -> tuple[sql.Composed, dict[str, Any]]:
    """Return (statement, params) that set the changed columns and updated_at of one row, RETURNING `returning`.

    Only columns named in `updatable` may change (their names come from this code, never
    from a request); the values travel as parameters. Raises ValueError for any other key.
    """
    columns = [name for name in updatable if name in changes]
    unknown = sorted(set(changes) - set(columns))
    if unknown:
        raise ValueError(f"{table} has no updatable column {', '.join(unknown)}")
    assignments = [sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in columns]
    assignments.append(sql.SQL("updated_at = now()"))
    statement = sql.SQL("UPDATE {table} SET {assignments} WHERE id = {id} RETURNING {returning}").format(
        table=sql.Identifier(table),
        assignments=sql.SQL(", ").join(assignments),
        id=sql.Placeholder("id"),
        returning=sql.SQL(returning),
    )
    return statement, {**changes, "id": row_id}
