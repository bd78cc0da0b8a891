"""A real primary and streaming replica pair from the embedded binaries, for the replica tests.

`replica_pair()` starts a throwaway primary, creates the migrated `rentals_replicas`
database on it, and takes a hot standby copy of it with pg_basebackup (a replication slot,
`primary_conninfo` from `-R`); both are stopped and removed when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.embedded_pg import EmbeddedPostgres, EmbeddedReplica
from tests.helpers import private_server, upgrade_database

REPLICA_DBNAME = "rentals_replicas"


@dataclass
class ReplicaPair:
    """A primary, its streaming replica, and the migrated database both serve."""

    primary: EmbeddedPostgres
    replica: EmbeddedReplica
    dbname: str = REPLICA_DBNAME

    @property
    def primary_url(self) -> str:
        """Return the superuser's URL of the database on the primary."""
        return self.primary.dsn(self.dbname)

    @property
    def replica_url(self) -> str:
        """Return the superuser's URL of the same database on the replica."""
        return self.replica.dsn(self.dbname)


@contextlib.contextmanager
def replica_pair(folder: Path | None = None, settings: dict[str, str] | None = None) -> Iterator[ReplicaPair]:
    """Run a primary with the migrated database and a replica of it; stop and remove both after.

    The replica's data goes into `folder`, by default beside the primary's in a folder of
    its own from tempfile.mkdtemp: not under pytest's /tmp/pytest-of-<user>, whose older
    sessions another pytest run of the same user deletes (making files writable first),
    which breaks a server still running there. `settings` are the replica's server
    settings (e.g. `max_standby_streaming_delay`). The replica has replayed the
    migrations when the block starts.
    """
    with private_server({"max_connections": "100"}) as primary:
        primary.execute(f"CREATE DATABASE {REPLICA_DBNAME}")
        upgrade_database(primary.dsn(REPLICA_DBNAME))
        replica = EmbeddedReplica((folder or primary.data_dir.parent) / "replica", primary, settings=settings)
        try:
            replica.start()
            replica.wait_caught_up()
            yield ReplicaPair(primary, replica)
        finally:
            replica.remove()


def replica_health(client, headers: dict[str, str]) -> dict:
    """Return the first replica's section of GET /api/health/db."""
    return client.get("/api/health/db", headers=headers).get_json()["replicas"][0]


def wait_for_replica_state(client, headers: dict[str, str], state: str, timeout: float = 20) -> dict:
    """Wait until /api/health/db shows the first replica in `state`; return its section."""
    from tests.helpers import wait_until

    seen: list[dict] = []

    def reached() -> bool:
        seen.append(replica_health(client, headers))
        return seen[-1]["state"] == state

    assert wait_until(reached, timeout=timeout), f"the replica is not {state}: {seen[-1]}"
    return seen[-1]
