"""The WSGI entry point: gunicorn -c gunicorn.conf.py apps.api.wsgi:app (and flask --app apps.api.wsgi)."""

from apps.api.app import create_app
from apps.api.app.config import exit_on_config_error

# Under flask's CLI a bad setting prints its sentence and exits with status 2. gunicorn.conf.py
# has refused the same settings already, before any worker imports this.
with exit_on_config_error():
    app = create_app()
