"""SQL for staff accounts.

A user's email is stored, looked up and rate-limited in one form, normalize_email's:
every spelling of an address (case, width, ligatures) is one account, and the database
compares that text exactly, so no server locale decides what matches what.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import psycopg2.errors

from ..errors import Conflict, NotFound, ValidationError
from .database import execute_query_one, execute_write

ROLES = ("admin", "staff")
# The users table's CHECK on the stored (normalised) email.
EMAIL_LENGTH = (3, 254)
_PUBLIC = "id, email, full_name, role, active, created_at, updated_at"


def normalize_email(email: str) -> str:
    """Return the one form of an email that users are stored, looked up and rate-limited by.

    Unicode's NFKC_Casefold, as Python computes it (NFKC, full case folding, NFKC again),
    then trimmed: "Ada@Example.COM", fullwidth letters and "ß" for "ss" all give one text.
    Idempotent. The database's lower() is never used: it follows the server's locale.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", email).casefold()).strip()


def create_user(email: str, password_hash: str, full_name: str, role: str) -> dict[str, Any]:
    """Insert a user under the normalised email and return it (without its hash).

    Raises Conflict when another user has that email in any spelling, ValidationError
    when the normalised email is too long.
    """
    email = normalize_email(email)
    low, high = EMAIL_LENGTH
    if not low <= len(email) <= high:
        raise ValidationError(
            f"the email has {len(email)} characters once normalised; {low} to {high} are allowed",
            details={"email": ["too long once normalised"]},
        )
    try:
        return execute_write(
            f"INSERT INTO users (email, password_hash, full_name, role) VALUES (%s, %s, %s, %s) RETURNING {_PUBLIC}",
            (email, password_hash, full_name, role),
        )
    except psycopg2.errors.UniqueViolation:
        raise Conflict(f"a user with email {email} already exists", code="email_taken") from None


def get_user_for_login(email: str) -> dict[str, Any] | None:
    """Return the user with this email (any spelling), its password hash included, or None."""
    return execute_query_one(
        f"SELECT {_PUBLIC}, password_hash FROM users WHERE email = %s",
        (normalize_email(email),),
    )


def get_user(user_id: int) -> dict[str, Any] | None:
    """Return one user without its hash, or None."""
    return execute_query_one(f"SELECT {_PUBLIC} FROM users WHERE id = %s", (user_id,))


def get_user_access(user_id: int) -> dict[str, Any] | None:
    """Return what the token check needs to know of a user (role, active), or None."""
    return execute_query_one("SELECT role, active FROM users WHERE id = %s", (user_id,))


def set_user_active(email: str, active: bool) -> dict[str, Any]:
    """Activate or deactivate the user with this email (any spelling) and return it; raise NotFound."""
    row = execute_write(
        f"UPDATE users SET active = %s, updated_at = now() WHERE email = %s RETURNING {_PUBLIC}",
        (active, normalize_email(email)),
    )
    if not row:
        raise NotFound(f"no user has email {email}")
    return row
