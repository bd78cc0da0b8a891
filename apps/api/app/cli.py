"""Command-line tools: flask --app apps.api.wsgi db upgrade | db status | db seed | db demo | users create
| jobs run | jobs run-once NAME | jobs list."""

from __future__ import annotations

import json
import logging
import os
import signal

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from . import jobs, metrics, migrate, seed
from .auth import hash_password
from .errors import APIError
from .jobs import runner
from .models import database, users
from .schemas import Email

MIN_PASSWORD_LENGTH = 10


class CommandGroup(AppGroup):
    """A command group whose commands end with a sentence, not a traceback, when the database cannot serve them."""

    def invoke(self, ctx: click.Context) -> object:
        """Run the subcommand; turn DatabaseUnavailable into a one-line error and exit status 1."""
        try:
            return super().invoke(ctx)
        except database.DatabaseUnavailable as exc:
            raise click.ClickException(
                f"the database cannot serve this command ({exc}); check that PostgreSQL runs where DATABASE_URL points"
            ) from None


db_cli = CommandGroup("db", help="Database schema and data.")


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


@db_cli.command("apply-timeouts")
def apply_timeouts_command() -> None:
    """Make the configured statement, lock and idle-in-transaction timeouts the defaults of DATABASE_URL's role.

    Behind PgBouncer (DB_POOLER=pgbouncer) the app cannot send them at connect time; the
    role carries them instead, and each worker checks at start that they arrive.
    """
    applied = database.apply_session_timeouts()
    click.echo(
        "set on the role for new sessions: "
        + ", ".join(f"{name} = {ms} ms" for name, ms in applied.items())
        + "; sessions opened before keep their values until they reconnect (behind PgBouncer: RECONNECT"
        " in its admin console, or a restart)"
    )


@db_cli.command("status")
def status_command() -> None:
    """List the migrations and when each was applied."""
    for row in migrate.status():
        applied = row["applied_at"].isoformat() if row["applied_at"] else "pending"
        click.echo(f"{row['version']}_{row['name']}: {applied}")


@db_cli.command("seed")
@click.option("--customers", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--products", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--rentals", type=click.IntRange(min=0), default=20000, show_default=True)
@click.option("--seed", "seed_value", type=int, default=42, show_default=True, help="Same seed, same day: same rows.")
@click.option("--truncate", is_flag=True, help="Empty customers, products and rentals first (users stay).")
def seed_command(customers: int, products: int, rentals: int, seed_value: int, truncate: bool) -> None:
    """Fill empty customers, products and rentals tables with realistic generated rows (COPY)."""
    try:
        result = seed.seed(customers, products, rentals, seed=seed_value, truncate=truncate)
    except seed.SeedError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"seeded {result.customers} customers, {result.products} products and {result.rentals} rentals"
        f" in {result.seconds:.1f} s"
    )


@db_cli.command("demo")
def demo_command() -> None:
    """Seed a small demo set and a demo admin if the database is empty; print the admin's login."""
    created = seed.seed_demo_if_empty()
    if created is None:
        click.echo("the database already holds data; nothing seeded")
    else:
        click.echo(f"demo admin: {created['email']} / {created['password']}")


users_cli = CommandGroup("users", help="Staff accounts.")


def _read_password() -> str:
    """Return NEW_USER_PASSWORD when set (scripts), else ask twice without echo."""
    password = os.environ.get("NEW_USER_PASSWORD") or click.prompt(
        "Password", hide_input=True, confirmation_prompt=True
    )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise click.ClickException(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


@users_cli.command("create")
@click.option("--email", required=True, help="The login; stored normalised, so unique in any spelling.")
@click.option("--role", type=click.Choice(users.ROLES), default="staff", show_default=True)
@click.option("--full-name", default=None, help="Defaults to the email's local part.")
def create_user_command(email: str, role: str, full_name: str | None) -> None:
    """Create a staff account; the password comes from a prompt or NEW_USER_PASSWORD, never an argument."""
    try:
        email = TypeAdapter(Email).validate_python(email)
    except PydanticValidationError:
        raise click.ClickException(f"{email!r} is not an email address") from None
    password = _read_password()
    try:
        user = users.create_user(email, hash_password(password), full_name or email.split("@")[0], role)
    except APIError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"created {user['role']} {user['email']} (id {user['id']})")


def _set_active(email: str, active: bool) -> None:
    try:
        user = users.set_user_active(email, active)
    except APIError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"{'activated' if active else 'deactivated'} {user['email']}")


@users_cli.command("deactivate")
@click.option("--email", required=True)
def deactivate_user_command(email: str) -> None:
    """Deactivate an account: login stops at once, its tokens within USER_RECHECK_SECONDS."""
    _set_active(email, False)


@users_cli.command("activate")
@click.option("--email", required=True)
def activate_user_command(email: str) -> None:
    """Reactivate an account."""
    _set_active(email, True)


jobs_cli = AppGroup("jobs", help="Scheduled jobs: run the scheduler, run one job now, list them.")


def _selected(names: tuple[str, ...]) -> list[jobs.Job]:
    unknown = sorted(set(names) - set(jobs.JOBS))
    if unknown:
        raise click.ClickException(f"no job named {', '.join(unknown)}; known: {', '.join(sorted(jobs.JOBS))}")
    return [jobs.JOBS[name] for name in names] if names else list(jobs.JOBS.values())


@jobs_cli.command("run")
@click.option("--only", multiple=True, metavar="NAME", help="Run only this job (repeatable); default: every job.")
def run_jobs_command(only: tuple[str, ...]) -> None:
    """Run the scheduler until SIGTERM or SIGINT: each due slot of each job, once across all schedulers.

    The first signal stops it after the run in progress; a second abandons that run (rolled
    back, and retried at once by another scheduler).
    """
    app = current_app._get_current_object()
    database.serve_no_requests(app)
    scheduler = runner.Scheduler(app, _selected(only))
    if metrics.multiprocess_dir():
        logging.getLogger(__name__).warning(
            "%s is set: this scheduler's pool would count among the web workers' figures of the host;"
            " run the scheduler without it (its job figures come from the database)",
            metrics.MULTIPROCESS_DIR_VAR,
        )

    def stop(signum: int, _frame: object) -> None:
        running = scheduler.running
        if scheduler.stopping.is_set() and running is not None:
            raise runner.Abandoned(f"signal {signum}")
        scheduler.stopping.set()
        if running is not None:
            logging.getLogger(__name__).info(
                "stopping after the run of %s in progress (at most %g s); signal again to abandon it",
                running.name,
                running.timeout,
            )

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        scheduler.run()
    except runner.Abandoned:
        raise SystemExit(1) from None


@jobs_cli.command("run-once")
@click.argument("name")
@click.option(
    "--now", "manual", is_flag=True, help="Run in a slot of its own at this moment, even if the current slot ran."
)
def run_once_command(name: str, manual: bool) -> None:
    """Claim the job's current slot and run it here (exit 1 if it fails); say so if another run had it."""
    job = _selected((name,))[0]
    database.serve_no_requests(current_app._get_current_object())
    outcome = runner.run_due(job, runner.runner_id(), manual=manual)
    if outcome is None:
        click.echo(f"{name}: the current slot ran already, is running, or waits for its retry; --now runs it anyway")
        return
    if outcome.outcome != "succeeded":
        raise click.ClickException(f"{name} failed: {outcome.error}")
    click.echo(f"{name}: {json.dumps(outcome.summary, sort_keys=True)}")


@jobs_cli.command("list")
def list_jobs_command() -> None:
    """List the declared jobs with their schedule and timeout."""
    settings = current_app.config["SETTINGS"]
    for job in jobs.JOBS.values():
        offset = f" + {job.offset:g} s" if job.offset else ""
        named = f" ({job.every})" if isinstance(job.every, str) else ""
        click.echo(f"{job.name}: every {job.period(settings):g} s{named}{offset}, timeout {job.timeout:g} s")


def register(app: Flask) -> None:
    """Add the command groups to the app's CLI."""
    app.cli.add_command(db_cli)
    app.cli.add_command(users_cli)
    app.cli.add_command(jobs_cli)
