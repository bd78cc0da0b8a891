"""The WSGI entry point, for gunicorn (gunicorn -c gunicorn.conf.py apps.api.wsgi:app), granian and flask --app.

Under granian (README, Deployment) each worker imports this module after the fork and does
what gunicorn.conf.py's hooks do elsewhere (apps/api/server/granian.py); under gunicorn and
anything else it is create_app().
"""

from apps.api.server import granian

# Before anything imports prometheus_client: it picks its multiprocess mode on import.
granian.before_import()

from apps.api.app import create_app  # noqa: E402
from apps.api.app.config import exit_on_config_error  # noqa: E402

# Under flask's CLI a bad setting prints its sentence and exits with status 2; a granian worker
# logs it and stops its server (worker_app). gunicorn.conf.py has refused the same settings
# already, before any worker imports this.
with exit_on_config_error():
    app = granian.worker_app(create_app) if granian.in_worker() else create_app()
