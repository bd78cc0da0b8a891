"""Command-line tools: flask --app apps.api.wsgi db upgrade | db status."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from . import migrate

db_cli = AppGroup("db", help="Database schema and data.")


@db_cli.command("upgrade")
def upgrade_command() -> None:
    """Apply the migrations not yet applied to DATABASE_URL."""
    try:
        applied = migrate.upgrade()
    except migrate.MigrationError as exc:
        raise click.ClickException(str(exc)) from exc
    if applied:
        click.echo(f"applied migrations: {', '.join(applied)}")
    else:
        click.echo("database is up to date")


@db_cli.command("status")
def status_command() -> None:
    """List the migrations and when each was applied."""
    for row in migrate.status():
        applied = row["applied_at"].isoformat() if row["applied_at"] else "pending"
        click.echo(f"{row['version']}_{row['name']}: {applied}")


def register(app: Flask) -> None:
    """Add the command groups to the app's CLI."""
    app.cli.add_command(db_cli)
