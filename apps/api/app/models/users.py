"""SQL for staff accounts."""

from __future__ import annotations

from typing import Any

import psycopg2.errors

from ..errors import Conflict, NotFound
from .database import execute_query_one, execute_write

ROLES = ("admin", "staff")
_PUBLIC = "id, email, full_name, role, active, created_at, updated_at"


def create_user(email: str, password_hash: str, full_name: str, role: str) -> dict[str, Any]:
    """Insert a user and return it (without its hash); raise Conflict when the email is taken."""
    try:
        return execute_write(
            f"INSERT INTO users (email, password_hash, full_name, role) VALUES (%s, %s, %s, %s) RETURNING {_PUBLIC}",
            (email, password_hash, full_name, role),
        )
    except psycopg2.errors.UniqueViolation:
        raise Conflict(f"a user with email {email} already exists", code="email_taken") from None


def get_user_for_login(email: str) -> dict[str, Any] | None:
    """Return the user with this email (any case), its password hash included, or None."""
    return execute_query_one(
        f"SELECT {_PUBLIC}, password_hash FROM users WHERE lower(email) = lower(%s)",
        (email,),
    )


def get_user(user_id: int) -> dict[str, Any] | None:
    """Return one user without its hash, or None."""
    return execute_query_one(f"SELECT {_PUBLIC} FROM users WHERE id = %s", (user_id,))


def get_user_access(user_id: int) -> dict[str, Any] | None:
    """Return what the token check needs to know of a user (role, active), or None."""
    return execute_query_one("SELECT role, active FROM users WHERE id = %s", (user_id,))


def set_user_active(email: str, active: bool) -> dict[str, Any]:
    """Activate or deactivate the user with this email and return it; raise NotFound."""
    row = execute_write(
        f"UPDATE users SET active = %s, updated_at = now() WHERE lower(email) = lower(%s) RETURNING {_PUBLIC}",
        (active, email),
    )
    if not row:
        raise NotFound(f"no user has email {email}")
    return row
