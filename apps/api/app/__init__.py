"""The Rentals API: create_app() wires configuration, the database layer, blueprints and errors."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask
from flask_openapi3 import OpenAPI

from . import auth, cli, errors, logs, middleware, openapi, security
from .config import load_settings, settings_as_flask_config
from .models import database
from .routes import auth as auth_routes
from .routes import customers, dashboard, health, metrics, products, rentals
from .routes.common import AsciiIntConverter
from .serialization import APIJSONProvider, NoSessionInterface


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    """Build the app; `config` overrides settings by env var name (tests and tools).

    Raises ConfigError with a sentence when a setting is bad. Opens no connection: each
    process creates its pool after fork (gunicorn's post_worker_init) or on first use.
    """
    settings = load_settings(config)
    logs.configure_logging(settings.log_format, settings.log_level)
    # flask-openapi3's Flask subclass: it validates requests and writes /api/openapi.json.
    app = OpenAPI(__name__, static_folder=None, **openapi.app_options())
    app.json = APIJSONProvider(app)
    # A bearer-token API has no cookie session; Flask would otherwise build a signing
    # serializer for one on every request.
    app.session_interface = NoSessionInterface()
    app.config.update(settings_as_flask_config(settings))
    database.init_app(app, settings)
    errors.register_error_handlers(app)
    security.init_app(app, settings)
    middleware.init_app(app, settings)
    # Before any rule is added: each rule takes its converters from the map when added.
    app.url_map.converters["int"] = AsciiIntConverter
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    auth.init_app(app)
    for domain in (auth_routes, customers, products, rentals, dashboard):
        app.register_api(domain.bp)
    app.register_blueprint(openapi.bp)
    cli.register(app)
    return app
