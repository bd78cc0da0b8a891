"""Every setting of the API: declared once, read once from the environment, checked at startup.

Each setting is one annotated field of `Settings`: its type, its rule (the range that
validation enforces and whose sentence a bad value gets), its documentation (`Doc`) and
its default. Loading is pydantic-settings'; the README's settings table and
`.env.production.template` are generated from the same declarations
(`python -m devtools.settings_docs`), and a test keeps them in step.

`APP_ENV` (dev, preprod, production, test) picks `.env.<APP_ENV>` at the project root;
variables already in the real environment win over the file. `.env.production.template`
is never loaded.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import psycopg2.extensions
import pydantic
from dotenv import dotenv_values
from pydantic import GetCoreSchemaHandler, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import core_schema
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[3]
APP_ENVS = ("dev", "preprod", "production", "test")
POOL_MODES = ("pool", "null")
POOLERS = ("none", "pgbouncer")
# PgBouncer's virtual database for its admin console (SHOW POOLS, SHOW STATS...).
PGBOUNCER_ADMIN_DATABASE = "pgbouncer"
# Environments that refuse development secrets and short ones.
STRICT_ENVS = ("production", "preprod")
MIN_SECRET_LENGTH = 32
DEV_DEFAULT_SECRETS = frozenset(
    {"dev-secret-key-change-me", "dev-health-token", "test-secret-key", "test-health-token"}
)
# What DATABASE_URL may ask libpq for: a server that takes writes. With several hosts one
# of these is required, or libpq would settle for the first host that answers, a standby too.
PRIMARY_SESSION_ATTRS = ("read-write", "primary")
GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"  # noqa: S105 (a command, not a secret)


class ConfigError(ValueError):
    """A setting is missing or has a value the API cannot run with."""


# The exit status of a process refused for its configuration: a usage error, as click's.
CONFIG_ERROR_EXIT_STATUS = 2


@contextlib.contextmanager
def exit_on_config_error(cleanup: Callable[[], object] | None = None) -> Iterator[None]:
    """Run the block; a ConfigError raised in it ends the process: its sentence on stderr, exit status 2.

    For the entry points a person starts (gunicorn.conf.py, apps/api/wsgi.py under flask):
    the sentence names the setting and the fix, and a traceback would only bury it.
    `cleanup` runs first, for what the process made before it read its settings.
    """
    try:
        yield
    except ConfigError as exc:
        if cleanup is not None:
            cleanup()
        sys.stderr.write(f"{exc}\n")
        sys.stderr.flush()
        raise SystemExit(CONFIG_ERROR_EXIT_STATUS) from None


# -- rules: how a value is read, what it may be, and the sentence a bad one gets ---------------


@dataclass(frozen=True)
class Rule:
    """Reads one setting's raw value (text from the environment, or a typed default) and checks it.

    `parse` returns the value or raises ValueError with a sentence naming the variable;
    `describe` says what values are allowed, for the docs.
    """

    def parse(self, name: str, raw: Any) -> Any:
        """Return the value of `raw` for setting `name`; raise ValueError with a sentence."""
        raise NotImplementedError

    def describe(self) -> str:
        """Return the allowed values, in a few words."""
        raise NotImplementedError

    def show(self, value: Any) -> str:
        """Return a value as the docs write it."""
        return str(value)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        """Validate the field with `parse`, before pydantic's own type check."""
        return core_schema.with_info_before_validator_function(self._validate, handler(source))

    def _validate(self, value: Any, info: ValidationInfo) -> Any:
        return self.parse(info.field_name.upper(), value)


def _text(raw: Any) -> str:
    return "" if raw is None else str(raw)


def _number(name: str, raw: Any, what: str, positive: bool) -> float:
    text = _text(raw)
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {text!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {text!r}.")
    if positive and value <= 0:
        raise ValueError(f"{name} must be greater than 0, got {text!r}.")
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, got {text!r}.")
    return value


@dataclass(frozen=True)
class Whole(Rule):
    """A whole number, at least `minimum`; with `maximum`, a named range (`what`)."""

    minimum: int
    maximum: int | None = None
    what: str = "a whole number"
    unit: str = ""

    def parse(self, name: str, raw: Any) -> int:
        """Return the integer; raise ValueError naming `name` when it is not one or out of range."""
        try:
            value = int(_text(raw).strip())
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {_text(raw)!r}.") from None
        if value < self.minimum:
            raise ValueError(f"{name} must be at least {self.minimum}, got {value}.")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{name} must be {self.what} ({self.minimum} to {self.maximum}), got {value}.")
        return value

    def describe(self) -> str:
        """Return the range."""
        if self.maximum is not None:
            return f"{self.minimum} to {self.maximum}"
        return f"{self.minimum} or more"

    def show(self, value: Any) -> str:
        """Return the number with its unit."""
        return f"{value} {self.unit}".strip()


@dataclass(frozen=True)
class Seconds(Rule):
    """A finite number of seconds, greater than 0 (or 0 or more when not `positive`)."""

    positive: bool = True

    def parse(self, name: str, raw: Any) -> float:
        """Return the seconds; raise ValueError naming `name` when not a finite number in range."""
        return _number(name, raw, "a number of seconds", self.positive)

    def describe(self) -> str:
        """Return the range."""
        return "> 0" if self.positive else "0 or more"

    def show(self, value: Any) -> str:
        """Return the seconds with their unit."""
        return f"{value:g} s"


@dataclass(frozen=True)
class Fraction(Rule):
    """A share of something: greater than 0, at most 1."""

    of: str

    def parse(self, name: str, raw: Any) -> float:
        """Return the fraction; raise ValueError naming `name` when not in (0, 1]."""
        value = _number(name, raw, "a number", positive=True)
        if value > 1:
            raise ValueError(f"{name} is a fraction of {self.of} (0 to 1), got {value}.")
        return value

    def describe(self) -> str:
        """Return the range."""
        return "> 0, at most 1"

    def show(self, value: Any) -> str:
        """Return the fraction."""
        return f"{value:g}"


@dataclass(frozen=True)
class Choice(Rule):
    """One of a few words, any case."""

    choices: tuple[str, ...]

    def parse(self, name: str, raw: Any) -> str:
        """Return the word in lower case; raise ValueError naming `name` when it is not a choice."""
        value = _text(raw).strip().lower()
        if value not in self.choices:
            raise ValueError(f"{name} must be one of {', '.join(self.choices)}, got {_text(raw)!r}.")
        return value

    def describe(self) -> str:
        """Return the choices."""
        return " \\| ".join(f"`{choice}`" for choice in self.choices)

    def show(self, value: Any) -> str:
        """Return the word as code."""
        return f"`{value}`"


@dataclass(frozen=True)
class Boolean(Rule):
    """true or false (also 1/0, yes/no)."""

    def parse(self, name: str, raw: Any) -> bool:
        """Return the boolean; raise ValueError naming `name` for anything else."""
        if isinstance(raw, bool):
            return raw
        value = _text(raw).strip().lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false, got {_text(raw)!r}.")
        return value in ("true", "1", "yes")

    def describe(self) -> str:
        """Return the choices."""
        return "`true` \\| `false`"

    def show(self, value: Any) -> str:
        """Return the boolean as code."""
        return f"`{str(value).lower()}`"


@dataclass(frozen=True)
class Text(Rule):
    """Free text, trimmed unless `keep_spaces`."""

    keep_spaces: bool = False

    def parse(self, name: str, raw: Any) -> str:
        """Return the text."""
        text = _text(raw)
        return text if self.keep_spaces else text.strip()

    def describe(self) -> str:
        """Return what is allowed."""
        return "text"

    def show(self, value: Any) -> str:
        """Return the text as code."""
        return f"`{value}`" if value else "empty"


# What a libpq URL starts with (libpq accepts both).
POSTGRES_URL_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class DatabaseURL(Rule):
    """A required libpq URL (postgresql://...) of the primary; its password never appears in a sentence.

    It may list several hosts (postgresql://a:5432,b:5432/db?target_session_attrs=read-write):
    libpq tries them in turn and keeps the first that takes writes, which is how the app
    finds the new primary after a failover.
    """

    def parse(self, name: str, raw: Any) -> str:
        """Return the URL; raise ValueError naming `name` when it is missing, malformed or may reach a standby."""
        value = _text(raw).strip()
        if not value:
            raise ValueError(f"{name} is not set; set it to postgresql://user:password@host:5432/dbname.")
        if not value.startswith(POSTGRES_URL_SCHEMES):
            raise ValueError(f"{name} must start with postgresql://, got {redact_url(value)!r}.")
        try:
            params = psycopg2.extensions.parse_dsn(value)
        except psycopg2.ProgrammingError as exc:
            reason = str(exc).strip().splitlines()[0].removeprefix("invalid dsn: ")
            raise ValueError(f"{name} is not a valid libpq URL ({reason}), got {redact_url(value)!r}.") from None
        attrs = params.get("target_session_attrs")
        several = "," in params.get("host", "")
        wanted = " or ".join(f"target_session_attrs={a}" for a in PRIMARY_SESSION_ATTRS)
        if attrs is not None and attrs not in PRIMARY_SESSION_ATTRS:
            raise ValueError(
                f"{name} asks for target_session_attrs={attrs}, but the app writes: use {wanted} (replicas for"
                f" reads are configured apart), got {redact_url(value)!r}."
            )
        if several and attrs is None:
            raise ValueError(
                f"{name} lists several hosts without {wanted}, so libpq would keep the first host that answers,"
                f" a standby too; add ?target_session_attrs=read-write, got {redact_url(value)!r}."
            )
        return value

    def describe(self) -> str:
        """Return what is allowed."""
        return "`postgresql://` URL; several hosts with `target_session_attrs=read-write`"


@dataclass(frozen=True)
class ReplicaURLs(Rule):
    """Comma-separated libpq URLs of streaming replicas, or none; passwords never appear in a sentence."""

    def parse(self, name: str, raw: Any) -> tuple[str, ...]:
        """Return the URLs in order; raise ValueError naming `name` for one that is not PostgreSQL's."""
        if isinstance(raw, tuple):
            return raw
        urls = tuple(url.strip() for url in _text(raw).split(",") if url.strip())
        for url in urls:
            if not url.startswith(POSTGRES_URL_SCHEMES):
                raise ValueError(
                    f"{name} lists {redact_url(url)!r}, which is not a postgresql:// URL; list the replicas' URLs,"
                    " comma-separated."
                )
        if len(set(urls)) != len(urls):
            raise ValueError(f"{name} lists the same replica twice.")
        return urls

    def describe(self) -> str:
        """Return what is allowed."""
        return "empty, or comma-separated `postgresql://` URLs"

    def show(self, value: Any) -> str:
        """Return the URLs, or empty."""
        return ", ".join(f"`{url}`" for url in value) if value else "empty"


@dataclass(frozen=True)
class AdminConsoleURL(Rule):
    """An optional libpq URL of PgBouncer's admin console (database `pgbouncer`); its password is never shown."""

    def parse(self, name: str, raw: Any) -> str:
        """Return the URL, or "" when unset; raise ValueError naming `name` when it is not the console's."""
        value = _text(raw).strip()
        if not value:
            return ""
        example = "postgresql://user:password@host:6432/pgbouncer"
        if not value.startswith(POSTGRES_URL_SCHEMES):
            raise ValueError(f"{name} must be a URL like {example}, got {redact_url(value)!r}.")
        if urlsplit(value).path.strip("/") != PGBOUNCER_ADMIN_DATABASE:
            raise ValueError(
                f"{name} must name PgBouncer's admin database, {PGBOUNCER_ADMIN_DATABASE} ({example}),"
                f" got {redact_url(value)!r}."
            )
        return value

    def describe(self) -> str:
        """Return what is allowed."""
        return f"empty, or a `postgresql://` URL of the `{PGBOUNCER_ADMIN_DATABASE}` database"

    def show(self, value: Any) -> str:
        """Return the URL as code, or empty."""
        return f"`{value}`" if value else "empty"


SMTP_SCHEMES = ("smtp", "smtps")


@dataclass(frozen=True)
class SmtpURL(Rule):
    """An optional mail server URL: smtp://[user:password@]host[:port] (STARTTLS) or smtps:// (TLS from the start)."""

    def parse(self, name: str, raw: Any) -> str:
        """Return the URL, or "" when unset; raise ValueError naming `name` when it is not an SMTP URL."""
        value = _text(raw).strip()
        if not value:
            return ""
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in SMTP_SCHEMES or not parts.hostname:
            raise ValueError(
                f"{name} must be a URL like smtp://user:password@mail.example.com:587 (STARTTLS) or smtps://..."
                f":465 (TLS), got {redact_url(value)!r}."
            )
        return value

    def describe(self) -> str:
        """Return what is allowed."""
        return "empty, or `smtp://[user:password@]host[:port]` (STARTTLS) \\| `smtps://...` (TLS)"

    def show(self, value: Any) -> str:
        """Return the URL as code, or empty."""
        return f"`{value}`" if value else "empty"


@dataclass(frozen=True)
class Secret(Rule):
    """A required secret; strict environments refuse development defaults and short ones (see Settings)."""

    def parse(self, name: str, raw: Any) -> str:
        """Return the secret; raise ValueError naming `name` when it is not set."""
        value = _text(raw)
        if not value:
            raise ValueError(f"{name} is not set; generate one with: {GENERATE_SECRET}.")
        return value

    def describe(self) -> str:
        """Return what is allowed."""
        return f"{MIN_SECRET_LENGTH}+ characters in {' and '.join(STRICT_ENVS)}"


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


@dataclass(frozen=True)
class Origins(Rule):
    """Comma-separated browser origins (scheme://host[:port]), or * alone."""

    def parse(self, name: str, raw: Any) -> tuple[str, ...]:
        """Return the origins; raise ValueError naming `name` for anything that is not one."""
        if isinstance(raw, tuple):
            return raw
        origins = tuple(origin.strip().rstrip("/") for origin in _text(raw).split(",") if origin.strip())
        for origin in origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"{name} lists {origin!r}, which is not an origin; use scheme://host[:port] without a path, "
                    "comma-separated (or * for any origin, without credentials)."
                )
        if "*" in origins and len(origins) > 1:
            raise ValueError(f"{name} is * or a list of origins, not both.")
        return origins

    def describe(self) -> str:
        """Return what is allowed."""
        return "comma-separated `scheme://host[:port]`, or `*`"

    def show(self, value: Any) -> str:
        """Return the origins."""
        return ", ".join(value) if value else "empty"


# -- docs: what each setting means, for the README table and the production template ----------

ENVIRONMENT = "Environment"
SECRETS = "Secrets (required; production and preprod refuse dev defaults and anything under 32 characters)"
POOL = "Connection pool (one per gunicorn worker)"
CONNECTION = "Every connection"
SERVER = "gunicorn"
HTTP = "HTTP"
SECURITY = "Security"
JOBS = "Scheduled jobs (`flask --app apps.api.wsgi jobs run`, one scheduler per host)"
NOTIFICATIONS = "Notifications (the outbox and its delivery by SMTP)"
REPLICAS = "Read replicas (a smaller pool per replica in each worker)"


@dataclass(frozen=True)
class Doc:
    """A setting's documentation: its section, what it means, and the docs' words for its default.

    `production` is the value `.env.production.template` suggests when it differs from
    the default; `default` replaces the default's rendering when it needs words.
    """

    section: str
    meaning: str
    production: str | None = None
    default: str | None = None


def redact_url(url: str) -> str:
    """Return a libpq URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class _Inputs:
    """What load_settings reads besides its overrides: an environment and the env file's values."""

    environ: Mapping[str, str]
    env_file: Mapping[str, str]


# Set by load_settings for the duration of one Settings(); Settings() alone reads os.environ.
_inputs: ContextVar[_Inputs | None] = ContextVar("rentals_settings_inputs", default=None)


class _VariablesSource(PydanticBaseSettingsSource):
    """The declared settings found in one mapping of variables, by their exact upper-case names."""

    def __init__(self, settings_cls: type[BaseSettings], pick: str) -> None:
        super().__init__(settings_cls)
        self.variables: Mapping[str, str] = getattr(_inputs.get() or _Inputs(os.environ, {}), pick)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Return the variable's raw text, if set."""
        return self.variables.get(field_name.upper()), field_name, False

    def __call__(self) -> dict[str, Any]:
        """Return every declared setting the mapping sets, by field name."""
        names = ((name, name.upper()) for name in self.settings_cls.model_fields)
        return {name: self.variables[upper] for name, upper in names if upper in self.variables}


class Settings(BaseSettings):
    """The API's configuration; field names are the env var names in lower case."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", validate_default=True)

    app_env: Annotated[str, Choice(APP_ENVS), Doc(ENVIRONMENT, "picks `.env.<APP_ENV>`", "production")] = "dev"
    database_url: Annotated[
        str,
        DatabaseURL(),
        Doc(
            SECRETS,
            "the primary's libpq URL; the role needs no superuser rights (README, Deploying); for failover it may"
            " list several hosts with `target_session_attrs=read-write` (README, Failover)",
            "postgresql://rentals:CHANGE_ME@db.internal:5432/rentals",
            "required",
        ),
    ] = ""
    secret_key: Annotated[
        str, Secret(), Doc(SECRETS, f"signs login tokens; generate one with {GENERATE_SECRET}", "", "required")
    ] = ""
    health_api_token: Annotated[
        str,
        Secret(),
        Doc(SECRETS, "bearer token for `/api/health/db*` and `/metrics`; generate it like SECRET_KEY", "", "required"),
    ] = ""
    db_pool_mode: Annotated[
        str,
        Choice(POOL_MODES),
        Doc(POOL, "`pool` keeps connections (behind PgBouncer too); `null` opens one per use, a baseline"),
    ] = "pool"
    db_pool_min_connections: Annotated[
        int, Whole(0), Doc(POOL, "connections opened at worker start and kept at least; <= DB_POOL_MAX_CONNECTIONS")
    ] = 2
    db_pool_max_connections: Annotated[
        int, Whole(1), Doc(POOL, "most connections one worker holds; >= GUNICORN_THREADS")
    ] = 10
    db_pool_timeout: Annotated[float, Seconds(), Doc(POOL, "wait for a free connection, then 503")] = 5
    db_pool_max_waiting: Annotated[
        int, Whole(0), Doc(POOL, "requests that may wait at once per worker; beyond, 503 at once")
    ] = 64
    db_pool_max_lifetime: Annotated[
        float, Seconds(), Doc(POOL, "a connection lives at most this long (less up to 10 % jitter), then is recycled")
    ] = 3600
    db_pool_idle_timeout: Annotated[
        float,
        Seconds(),
        Doc(POOL, "idle connections above the minimum unused for a whole period are closed (after 1 to 2 periods)"),
    ] = 300
    db_pool_ping_after: Annotated[
        float, Seconds(positive=False), Doc(POOL, "ping a connection idle this long before use; 0 pings every time")
    ] = 30
    db_pool_keepalive_seconds: Annotated[
        float,
        Seconds(positive=False),
        Doc(
            POOL,
            "idle connections unused this long are checked in the background, without a round trip, for a"
            " socket the server closed; closed ones are dropped and the pool refills to its minimum; 0: off",
        ),
    ] = 5
    db_pool_leak_threshold: Annotated[
        float, Seconds(), Doc(POOL, "log a connection held this long as a possible leak")
    ] = 30
    db_pool_warn_threshold: Annotated[
        float, Fraction("the pool"), Doc(POOL, "share of the pool in use at which `/api/health/db` says warning")
    ] = 0.6
    db_connect_timeout: Annotated[
        int, Whole(1, unit="s"), Doc(CONNECTION, "seconds to wait for the server to accept a connection (TCP + auth)")
    ] = 5
    db_statement_timeout_ms: Annotated[
        int, Whole(0, unit="ms"), Doc(CONNECTION, "the server cancels slower statements (503); 0: no limit")
    ] = 15000
    db_idle_in_transaction_timeout_ms: Annotated[
        int, Whole(0, unit="ms"), Doc(CONNECTION, "the server ends sessions idle inside a transaction; 0: no limit")
    ] = 30000
    db_lock_timeout_ms: Annotated[
        int, Whole(0, unit="ms"), Doc(CONNECTION, "lock waits fail after this (503); 0: no limit")
    ] = 5000
    db_retry_after: Annotated[int, Whole(1, unit="s"), Doc(CONNECTION, "`Retry-After` on every 503")] = 2
    db_probe_interval_seconds: Annotated[
        float,
        Seconds(),
        Doc(
            CONNECTION,
            "one worker per host connects and runs `SELECT 1` this often, traffic or not:"
            " `rentals_database_up` and the RentalsDatabaseDown alert",
        ),
    ] = 5
    db_pooler: Annotated[
        str,
        Choice(POOLERS),
        Doc(
            CONNECTION,
            "what sits between the app and PostgreSQL: `none`, or `pgbouncer` in transaction mode (no startup"
            " options; the timeouts travel on the role: `flask --app apps.api.wsgi db apply-timeouts`)",
        ),
    ] = "none"
    pgbouncer_admin_url: Annotated[
        str,
        AdminConsoleURL(),
        Doc(
            CONNECTION,
            "PgBouncer's admin console, as a user in its `stats_users`: adds the pooler's figures for our database"
            " to `/api/health/db`, `/metrics` and the capacity check (README, Behind PgBouncer); needs"
            " DB_POOLER=pgbouncer",
            "",
            "empty: off",
        ),
    ] = ""
    web_concurrency: Annotated[
        int, Whole(1), Doc(SERVER, "worker processes per host (granian: its --workers wins); 2 to 4 per core")
    ] = 2
    gunicorn_threads: Annotated[
        int, Whole(1), Doc(SERVER, "threads per worker (granian: --blocking-threads wins); <= DB_POOL_MAX_CONNECTIONS")
    ] = 8
    database_replica_urls: Annotated[
        tuple[str, ...],
        NoDecode,
        ReplicaURLs(),
        Doc(
            REPLICAS,
            "streaming replicas of DATABASE_URL's server, comma-separated; reads that may be a moment stale go"
            " there, known in health and metrics as `replica1`, `replica2`... in this order (README, Read replicas)",
            "",
            "empty: every query goes to the primary",
        ),
    ] = ()
    db_replica_pool_min_connections: Annotated[
        int, Whole(0), Doc(REPLICAS, "connections kept open to each replica per worker")
    ] = 1
    db_replica_pool_max_connections: Annotated[
        int, Whole(1), Doc(REPLICAS, "most connections one worker holds to each replica")
    ] = 5
    db_replica_pool_timeout: Annotated[
        float, Seconds(), Doc(REPLICAS, "wait for a free replica connection, then read from the primary")
    ] = 0.5
    db_replica_max_lag_ms: Annotated[
        int,
        Whole(0, unit="ms"),
        Doc(REPLICAS, "a replica further behind the primary serves no reads (requests without a consistency token)"),
    ] = 1000
    db_replica_check_interval_ms: Annotated[
        int,
        Whole(10, unit="ms"),
        Doc(REPLICAS, "how often each worker reads every replica's replay position and the primary's WAL position"),
    ] = 200
    gunicorn_timeout: Annotated[
        int,
        Whole(1, unit="s"),
        Doc(SERVER, "a worker silent this long is killed by the master; above DB_REQUEST_BUDGET_MS"),
    ] = 60
    api_hosts: Annotated[
        int, Whole(1), Doc(SERVER, "hosts running this API against the same database (the capacity check)")
    ] = 1
    port: Annotated[int, Whole(1, 65535, "a TCP port"), Doc(SERVER, "listen port")] = 8000
    bind_host: Annotated[
        str,
        Text(),
        Doc(SERVER, "listen address; `0.0.0.0` behind a load balancer or in a container", "0.0.0.0"),  # noqa: S104
    ] = "127.0.0.1"
    log_level: Annotated[str, Choice(("debug", "info", "warning", "error", "critical")), Doc(SERVER, "log level")] = (
        "info"
    )
    log_format: Annotated[
        str,
        Choice(("json", "text")),
        Doc(
            SERVER,
            "one JSON object per line (request id, method, path, status, duration, pool wait, user id),"
            " or readable lines",
            "json",
            "`json` in production and preprod, `text` elsewhere",
        ),
    ] = ""
    http_request_read_timeout_seconds: Annotated[
        float,
        Seconds(),
        Doc(
            SERVER,
            "seconds a client has to send a whole request (head and body); a slower one is cut off with 408,"
            " and holds no thread meanwhile",
        ),
    ] = 10
    db_request_budget_ms: Annotated[
        int,
        Whole(1, unit="ms"),
        Doc(
            HTTP,
            "one request's database time, its waits for a connection and its statements together; past it, 503",
            "",
            "half of GUNICORN_TIMEOUT",
        ),
    ] = 0
    max_content_length: Annotated[int, Whole(1, unit="bytes"), Doc(HTTP, "larger request bodies get 413")] = 1024 * 1024
    token_ttl_seconds: Annotated[int, Whole(60, unit="s"), Doc(HTTP, "login token lifetime")] = 3600
    dashboard_refresh_seconds: Annotated[
        float,
        Seconds(),
        Doc(
            HTTP,
            "the refresh_dashboard job recomputes the dashboard's snapshot this often, once for all workers and"
            " hosts; replies say how old it is (`generated_at`, `age_seconds`)",
        ),
    ] = 10
    idempotency_ttl_seconds: Annotated[
        int,
        Whole(60, unit="s"),
        Doc(HTTP, "how long a POST's reply is kept for retries with the same `Idempotency-Key`"),
    ] = 24 * 3600
    login_max_failures_per_account: Annotated[
        int,
        Whole(1),
        Doc(SECURITY, "failed logins (401) of one email per window; beyond, 429 even for the right password"),
    ] = 5
    login_max_failures_per_address: Annotated[
        int, Whole(1), Doc(SECURITY, "failed logins from one client address per window, whatever the account")
    ] = 50
    login_failure_window_seconds: Annotated[int, Whole(1, unit="s"), Doc(SECURITY, "the login limits' window")] = 900
    smtp_url: Annotated[
        str,
        SmtpURL(),
        Doc(
            NOTIFICATIONS,
            "the mail server the deliver_outbox job sends through; smtp:// upgrades with STARTTLS, smtps:// is TLS"
            " from the start; unset, messages are only logged and marked delivered",
            "smtps://rentals:password@mail.example.com:465",
            "empty: log only",
        ),
    ] = ""
    smtp_from: Annotated[
        str,
        Text(),
        Doc(
            NOTIFICATIONS, "the From of every message; its domain ends each Message-ID", "Rentals <rentals@example.com>"
        ),
    ] = "Rentals <rentals@localhost>"
    smtp_timeout_seconds: Annotated[
        float, Seconds(), Doc(NOTIFICATIONS, "one SMTP connection or command waits this long, then the attempt fails")
    ] = 10
    outbox_max_attempts: Annotated[
        int,
        Whole(1),
        Doc(NOTIFICATIONS, "attempts to send a message; after the last one fails it is parked (`/api/health/jobs`)"),
    ] = 10
    outbox_retry_seconds: Annotated[
        float,
        Seconds(),
        Doc(NOTIFICATIONS, "wait before the first retry of a message; doubles with each attempt, at most an hour"),
    ] = 30
    outbox_lease_seconds: Annotated[
        float,
        Seconds(),
        Doc(
            NOTIFICATIONS,
            "a claimed message is another host's to send after this long; at least 3 x SMTP_TIMEOUT_SECONDS",
        ),
    ] = 120
    trusted_proxies: Annotated[
        int,
        Whole(0),
        Doc(
            SECURITY,
            "proxies in front whose `X-Forwarded-For`/`-Proto` to believe: 1 behind one load balancer,"
            " 0 when clients reach gunicorn directly",
            "1",
        ),
    ] = 0
    cors_origins: Annotated[
        tuple[str, ...],
        NoDecode,
        Origins(),
        Doc(SECURITY, "origins allowed to call the API from a browser; empty turns CORS off", "", "empty: CORS off"),
    ] = ()
    cors_allow_credentials: Annotated[
        bool, Boolean(), Doc(SECURITY, "send `Access-Control-Allow-Credentials: true` (refused with `*`)")
    ] = False
    hsts_max_age: Annotated[
        int,
        Whole(0, unit="s"),
        Doc(SECURITY, "`Strict-Transport-Security` max-age; set once HTTPS is the only way in", "31536000", "0: off"),
    ] = 0
    jobs_poll_seconds: Annotated[
        float,
        Seconds(),
        Doc(JOBS, "how often a scheduler looks for a due slot, a failed run to retry or an expired lease"),
    ] = 1.0
    jobs_history_days: Annotated[
        int, Whole(1, unit="days"), Doc(JOBS, "runs older than this are deleted (each job's totals stay)")
    ] = 7
    reservation_grace_days: Annotated[
        int,
        Whole(0, unit="days"),
        Doc(JOBS, "a reserved rental not activated this many days after its start date is cancelled"),
    ] = 1

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format_for_env(cls, value: Any, info: ValidationInfo) -> Any:
        # JSON lines where machines read the logs, readable lines where people do.
        if _text(value):
            return value
        return "json" if info.data.get("app_env") in STRICT_ENVS else "text"

    @field_validator("db_request_budget_ms", mode="before")
    @classmethod
    def _budget_from_timeout(cls, value: Any, info: ValidationInfo) -> Any:
        # Unset: half the time the master grants a worker, so the 503 comes long before a kill.
        if _text(value).strip() not in ("", "0"):
            return value
        # A bad GUNICORN_TIMEOUT is reported on its own; derive from its default meanwhile.
        timeout = info.data.get("gunicorn_timeout", cls.model_fields["gunicorn_timeout"].default)
        return timeout * 1000 // 2

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = []
        if self.db_request_budget_ms >= self.gunicorn_timeout * 1000:
            problems.append(
                f"DB_REQUEST_BUDGET_MS ({self.db_request_budget_ms}) must be below GUNICORN_TIMEOUT "
                f"({self.gunicorn_timeout} s), or the master kills a worker before its request answers 503; "
                "lower the first or raise the second."
            )
        if self.db_pool_min_connections > self.db_pool_max_connections:
            problems.append(
                f"DB_POOL_MIN_CONNECTIONS ({self.db_pool_min_connections}) must not be greater than "
                f"DB_POOL_MAX_CONNECTIONS ({self.db_pool_max_connections}); lower the first or raise the second."
            )
        if self.db_replica_pool_min_connections > self.db_replica_pool_max_connections:
            problems.append(
                f"DB_REPLICA_POOL_MIN_CONNECTIONS ({self.db_replica_pool_min_connections}) must not be greater than "
                f"DB_REPLICA_POOL_MAX_CONNECTIONS ({self.db_replica_pool_max_connections}); lower the first or raise"
                " the second."
            )
        if self.pgbouncer_admin_url and self.db_pooler != "pgbouncer":
            problems.append(
                f"PGBOUNCER_ADMIN_URL is set but DB_POOLER is {self.db_pooler}; set DB_POOLER=pgbouncer when the app"
                " reaches PostgreSQL through PgBouncer, or leave PGBOUNCER_ADMIN_URL empty."
            )
        if self.outbox_lease_seconds < 3 * self.smtp_timeout_seconds:
            problems.append(
                f"OUTBOX_LEASE_SECONDS ({self.outbox_lease_seconds:g}) must be at least 3 x SMTP_TIMEOUT_SECONDS"
                f" ({self.smtp_timeout_seconds:g}), or a slow send outlives its claim and another host sends the"
                " message too; raise the first or lower the second."
            )
        if self.cors_allow_credentials and "*" in self.cors_origins:
            problems.append(
                "CORS_ALLOW_CREDENTIALS=true with CORS_ORIGINS=* would let any site send credentialed requests; "
                "list the allowed origins instead."
            )
        if self.app_env in STRICT_ENVS:
            for name in ("SECRET_KEY", "HEALTH_API_TOKEN"):
                value = getattr(self, name.lower())
                if value in DEV_DEFAULT_SECRETS or len(value) < MIN_SECRET_LENGTH:
                    problems.append(
                        f"{name} is a development default or shorter than {MIN_SECRET_LENGTH} characters, which "
                        f"{self.app_env} refuses; generate one with: {GENERATE_SECRET}."
                    )
        if problems:
            raise ValueError(" ".join(problems))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read, highest first: load_settings' overrides, the environment, then `.env.<APP_ENV>`."""
        return init_settings, _VariablesSource(settings_cls, "environ"), _VariablesSource(settings_cls, "env_file")

    def database_url_redacted(self) -> str:
        """Return DATABASE_URL with its password replaced, safe for logs and replies."""
        return redact_url(self.database_url)

    def replica_targets(self) -> list[tuple[str, str]]:
        """Return each replica's target name (`replica1`, `replica2`... in DATABASE_REPLICA_URLS' order) and URL.

        The names label the replicas in /api/health/db, the metrics and the logs: short,
        stable while the list keeps its order, and free of host names and passwords.
        """
        return [(f"replica{number}", url) for number, url in enumerate(self.database_replica_urls, start=1)]

    def pgbouncer_admin_url_redacted(self) -> str:
        """Return PGBOUNCER_ADMIN_URL with its password replaced, safe for logs and replies."""
        return redact_url(self.pgbouncer_admin_url)


SETTING_NAMES = tuple(name.upper() for name in Settings.model_fields)


def _rule(name: str) -> Rule:
    return next(m for m in Settings.model_fields[name.lower()].metadata if isinstance(m, Rule))


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting; return Settings or raise ConfigError with a sentence per problem.

    Precedence, highest first: `overrides` (tests, tools), `environ` (the real environment
    by default), then the `.env.<APP_ENV>` file, then the declared defaults.
    """
    environ = os.environ if environ is None else environ
    overrides = {key: str(value) for key, value in (overrides or {}).items()}
    unknown = sorted(set(overrides) - set(SETTING_NAMES))
    if unknown:
        raise ConfigError(f"unknown setting {', '.join(unknown)}; see .env.production.template for the names.")
    try:
        app_env = _rule("APP_ENV").parse("APP_ENV", overrides.get("APP_ENV") or environ.get("APP_ENV") or "dev")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    token = _inputs.set(_Inputs(environ, _env_file_values(app_env)))
    try:
        values = {key.lower(): value for key, value in overrides.items()}
        values["app_env"] = app_env
        return Settings(**values)
    except pydantic.ValidationError as exc:
        raise ConfigError(" ".join(_sentence(error) for error in exc.errors())) from None
    finally:
        _inputs.reset(token)


def _env_file_values(app_env: str) -> dict[str, str]:
    # Only variables with a value count; names are exact, as in the environment.
    path = PROJECT_ROOT / f".env.{app_env}"
    if not path.is_file():
        return {}
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


def _sentence(error: Any) -> str:
    # Our rules raise ValueError with a whole sentence; anything else is named by its field.
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):
        return str(cause)
    name = ".".join(str(part) for part in error["loc"]).upper() or "a setting"
    return f"{name}: {error['msg']}."


def settings_as_flask_config(settings: Settings) -> dict[str, object]:
    """Return the Flask config keys derived from the settings."""
    return {
        "SETTINGS": settings,
        "SECRET_KEY": settings.secret_key,
        "MAX_CONTENT_LENGTH": settings.max_content_length,
        "JSON_SORT_KEYS": False,
    }


@dataclass(frozen=True)
class SettingDoc:
    """One setting as the docs show it."""

    name: str
    section: str
    default: str
    allowed: str
    meaning: str
    production: str


def setting_docs() -> list[SettingDoc]:
    """Return every setting's documentation, in declaration order, from its declaration."""
    docs = []
    for field_name, field in Settings.model_fields.items():
        rule = next(m for m in field.metadata if isinstance(m, Rule))
        doc = next(m for m in field.metadata if isinstance(m, Doc))
        default = doc.default if doc.default is not None else rule.show(field.default)
        production = doc.production if doc.production is not None else _env_value(field.default)
        docs.append(SettingDoc(field_name.upper(), doc.section, default, rule.describe(), doc.meaning, production))
    return docs


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)
