"""The serving layer, outside the Flask app package: gunicorn's worker class and what runs the app under granian."""
