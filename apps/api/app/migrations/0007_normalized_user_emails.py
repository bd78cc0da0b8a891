"""Store users' emails in their one normalised form (models/users.py, normalize_email), unique as such.

Until now an email was stored as typed and unique by lower(email), which each server
computes by its own locale: under a libc UTF-8 locale lower('vİctim') is 'victim', under
C it is 'vİctim'. From here on the app stores, looks up and rate-limits the normalised
text and compares it exactly. Existing rows are normalised by the app's own function;
users whose emails become one address would become one login, so the migration refuses,
naming them, rather than pick one.
"""

from collections import defaultdict

from apps.api.app.migrate import MigrationError
from apps.api.app.models.users import EMAIL_LENGTH, normalize_email


def upgrade(cur):
    """Refuse on clashes or lengths the CHECK would reject; else normalise every email and index it."""
    # Nobody adds or renames a user between the check and the rewrite.
    cur.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
    cur.execute("SELECT id, email FROM users ORDER BY id")
    by_address = defaultdict(list)
    for user_id, email in cur.fetchall():
        by_address[normalize_email(email)].append((user_id, email))
    problems = [
        "users "
        + " and ".join(f"{user_id} ({email!r})" for user_id, email in owners)
        + f" share the address {address!r}"
        for address, owners in by_address.items()
        if len(owners) > 1
    ]
    low, high = EMAIL_LENGTH
    problems += [
        f"user {owners[0][0]} ({owners[0][1]!r}) would have {len(address)} characters, outside {low} to {high}"
        for address, owners in by_address.items()
        if not low <= len(address) <= high
    ]
    if problems:
        raise MigrationError(
            "cannot store users' emails normalised: "
            + "; ".join(problems)
            + ". Change or delete the users concerned (UPDATE users SET email = ... WHERE id = ...),"
            " then run db upgrade again."
        )
    cur.execute("DROP INDEX users_email_lower_key")
    for address, [(user_id, email)] in by_address.items():
        if address != email:
            # updated_at stays: the user changed nothing; the stored spelling did.
            cur.execute("UPDATE users SET email = %s WHERE id = %s", (address, user_id))
    cur.execute("CREATE UNIQUE INDEX users_email_key ON users (email)")
