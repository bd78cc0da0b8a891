"""Faults under load, against real processes: gunicorn with 2 workers and a real PostgreSQL.

Each test injects one fault (the server stopped and started, backends killed, a burst far
beyond the pool, a statement past its timeout, a table locked, SIGTERM, a leaking view)
while clients send real HTTP requests on loopback, then checks what the clients saw and
what the database holds: only 2xx or a 503 with Retry-After in the JSON error shape,
nothing slower than the pool timeout allows, the same workers serving afterwards, every
acknowledged booking in the table and no booking half-written.

`make test` runs each scenario once, briefly. `make chaos` runs this folder with CHAOS_SCALE
(more rounds, longer outages, bigger bursts) and CHAOS_REPORT (a JSON file for the measured
figures, quoted by docs/RELIABILITY.md). The harness is in tests/support/.
"""
