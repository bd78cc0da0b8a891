"""Harness that drives real processes: gunicorn, faults injected into PostgreSQL, HTTP load on
loopback, and the checks and figures of the chaos tests. Plain helpers are in tests/helpers.py."""
