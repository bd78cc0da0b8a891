"""The WSGI entry point, for gunicorn (gunicorn -c gunicorn.conf.py apps.api.wsgi:app) and granian.

Under granian (README, Deployment) each worker imports this module after the fork and does
what gunicorn.conf.py's hooks do elsewhere (apps/api/server/granian.py); under gunicorn and
anything else it is create_app().
"""

from apps.api.server import granian

# Before anything imports prometheus_client: it picks its multiprocess mode on import.
granian.before_import()

from apps.api.app import create_app  # noqa: E402

app = granian.worker_app(create_app) if granian.in_worker() else create_app()
