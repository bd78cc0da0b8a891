"""Fixtures of the chaos tests: the load's rows, and the report `make chaos` writes after them all."""

from __future__ import annotations

import datetime

import pytest

from tests.support.chaos import REPORT, write_report
from tests.support.load import World, seed_world


@pytest.fixture
def world(admin_conn) -> World:
    """The load's user, customers and products in this test's database."""
    return seed_world(admin_conn)


@pytest.fixture(scope="package", autouse=True)
def chaos_report(pg_server):
    """Write the figures every chaos test recorded to CHAOS_REPORT (make chaos), once, after the last of them."""
    started = datetime.datetime.now(datetime.UTC)
    yield
    if REPORT:
        write_report(REPORT, started, pg_server.execute("SHOW server_version")[0][0])
