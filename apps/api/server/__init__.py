"""The serving layer: what runs the app under gunicorn, outside the Flask app package."""
