"""The WSGI entry point: gunicorn -c gunicorn.conf.py apps.api.wsgi:app"""

from apps.api.app import create_app

app = create_app()
