"""Every setting of the API, read once from the environment and checked at startup.

`APP_ENV` (dev, preprod, production, test) picks `.env.<APP_ENV>` at the project root;
variables already in the real environment win over the file. `.env.production.template`
documents every variable; it is never loaded.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

PROJECT_ROOT = Path(__file__).resolve().parents[3]
APP_ENVS = ("dev", "preprod", "production", "test")
POOL_MODES = ("pool", "null")
DEV_DEFAULT_SECRETS = frozenset(
    {"dev-secret-key-change-me", "dev-health-token", "test-secret-key", "test-health-token"}
)


class ConfigError(ValueError):
    """A setting is missing or has a value the API cannot run with."""


@dataclass(frozen=True)
class Settings:
    """The API's configuration; field names are the env var names in lower case."""

    app_env: str
    database_url: str
    secret_key: str
    health_api_token: str
    db_pool_mode: str
    db_pool_min_connections: int
    db_pool_max_connections: int
    db_pool_timeout: float
    db_pool_max_waiting: int
    db_pool_max_lifetime: float
    db_pool_idle_timeout: float
    db_pool_ping_after: float
    db_pool_leak_threshold: float
    db_pool_warn_threshold: float
    db_connect_timeout: int
    db_statement_timeout_ms: int
    db_idle_in_transaction_timeout_ms: int
    db_lock_timeout_ms: int
    db_retry_after: int
    web_concurrency: int
    gunicorn_threads: int
    api_hosts: int
    port: int
    bind_host: str
    log_level: str
    log_format: str
    max_content_length: int
    token_ttl_seconds: int
    dashboard_cache_seconds: float
    login_max_failures_per_account: int
    login_max_failures_per_address: int
    login_failure_window_seconds: int
    trusted_proxies: int
    cors_origins: tuple[str, ...]
    cors_allow_credentials: bool
    hsts_max_age: int

    def database_url_redacted(self) -> str:
        """Return DATABASE_URL with its password replaced, safe for logs and replies."""
        return redact_url(self.database_url)


def redact_url(url: str) -> str:
    """Return a libpq URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# The defaults every environment starts from; .env.<APP_ENV> and the environment override them.
_DEFAULTS: dict[str, str] = {
    "DATABASE_URL": "",
    "SECRET_KEY": "",
    "HEALTH_API_TOKEN": "",
    "DB_POOL_MODE": "pool",
    "DB_POOL_MIN_CONNECTIONS": "2",
    "DB_POOL_MAX_CONNECTIONS": "10",
    "DB_POOL_TIMEOUT": "5",
    "DB_POOL_MAX_WAITING": "64",
    "DB_POOL_MAX_LIFETIME": "3600",
    "DB_POOL_IDLE_TIMEOUT": "300",
    "DB_POOL_PING_AFTER": "30",
    "DB_POOL_LEAK_THRESHOLD": "30",
    "DB_POOL_WARN_THRESHOLD": "0.6",
    "DB_CONNECT_TIMEOUT": "5",
    "DB_STATEMENT_TIMEOUT_MS": "15000",
    "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "30000",
    "DB_LOCK_TIMEOUT_MS": "5000",
    "DB_RETRY_AFTER": "2",
    "WEB_CONCURRENCY": "2",
    "GUNICORN_THREADS": "8",
    "API_HOSTS": "1",
    "PORT": "8000",
    "BIND_HOST": "127.0.0.1",
    "LOG_LEVEL": "info",
    "LOG_FORMAT": "",
    "MAX_CONTENT_LENGTH": str(1024 * 1024),
    "TOKEN_TTL_SECONDS": "3600",
    "DASHBOARD_CACHE_SECONDS": "5",
    "LOGIN_MAX_FAILURES_PER_ACCOUNT": "5",
    "LOGIN_MAX_FAILURES_PER_ADDRESS": "50",
    "LOGIN_FAILURE_WINDOW_SECONDS": "900",
    "TRUSTED_PROXIES": "0",
    "CORS_ORIGINS": "",
    "CORS_ALLOW_CREDENTIALS": "false",
    "HSTS_MAX_AGE": "0",
}


def _env_file_values(app_env: str) -> dict[str, str]:
    path = PROJECT_ROOT / f".env.{app_env}"
    if not path.is_file():
        return {}
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


def _integer(name: str, raw: str, *, minimum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}.") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}.")
    return value


def _number(name: str, raw: str, *, positive: bool = True) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}.") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}.")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {raw!r}.")
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, got {raw!r}.")
    return value


def _boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}.")
    return value in ("true", "1", "yes")


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


def _origins(name: str, raw: str) -> tuple[str, ...]:
    origins = tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise ConfigError(
                f"{name} lists {origin!r}, which is not an origin; use scheme://host[:port] without a path, "
                "comma-separated (or * for any origin, without credentials)."
            )
    if "*" in origins and len(origins) > 1:
        raise ConfigError(f"{name} is * or a list of origins, not both.")
    return origins


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}.")
    return value


def load_settings(overrides: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting; return Settings or raise ConfigError with a sentence.

    Precedence, highest first: `overrides` (tests, tools), the real environment, then the
    `.env.<APP_ENV>` file, then the defaults above.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    app_env = _choice("APP_ENV", overrides.get("APP_ENV") or environ.get("APP_ENV") or "dev", APP_ENVS)
    raw = {**_DEFAULTS, **_env_file_values(app_env)}
    raw.update({key: environ[key] for key in _DEFAULTS if key in environ})
    raw.update({key: str(value) for key, value in overrides.items() if key in _DEFAULTS})
    unknown = sorted(set(overrides) - set(_DEFAULTS) - {"APP_ENV"})
    if unknown:
        raise ConfigError(f"unknown setting {', '.join(unknown)}; see .env.production.template for the names.")

    get: Callable[[str], str] = raw.__getitem__
    settings = Settings(
        app_env=app_env,
        database_url=get("DATABASE_URL").strip(),
        secret_key=get("SECRET_KEY"),
        health_api_token=get("HEALTH_API_TOKEN"),
        db_pool_mode=_choice("DB_POOL_MODE", get("DB_POOL_MODE"), POOL_MODES),
        db_pool_min_connections=_integer("DB_POOL_MIN_CONNECTIONS", get("DB_POOL_MIN_CONNECTIONS"), minimum=0),
        db_pool_max_connections=_integer("DB_POOL_MAX_CONNECTIONS", get("DB_POOL_MAX_CONNECTIONS"), minimum=1),
        db_pool_timeout=_number("DB_POOL_TIMEOUT", get("DB_POOL_TIMEOUT")),
        db_pool_max_waiting=_integer("DB_POOL_MAX_WAITING", get("DB_POOL_MAX_WAITING"), minimum=0),
        db_pool_max_lifetime=_number("DB_POOL_MAX_LIFETIME", get("DB_POOL_MAX_LIFETIME")),
        db_pool_idle_timeout=_number("DB_POOL_IDLE_TIMEOUT", get("DB_POOL_IDLE_TIMEOUT")),
        db_pool_ping_after=_number("DB_POOL_PING_AFTER", get("DB_POOL_PING_AFTER"), positive=False),
        db_pool_leak_threshold=_number("DB_POOL_LEAK_THRESHOLD", get("DB_POOL_LEAK_THRESHOLD")),
        db_pool_warn_threshold=_number("DB_POOL_WARN_THRESHOLD", get("DB_POOL_WARN_THRESHOLD")),
        db_connect_timeout=_integer("DB_CONNECT_TIMEOUT", get("DB_CONNECT_TIMEOUT"), minimum=1),
        db_statement_timeout_ms=_integer("DB_STATEMENT_TIMEOUT_MS", get("DB_STATEMENT_TIMEOUT_MS"), minimum=0),
        db_idle_in_transaction_timeout_ms=_integer(
            "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", get("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS"), minimum=0
        ),
        db_lock_timeout_ms=_integer("DB_LOCK_TIMEOUT_MS", get("DB_LOCK_TIMEOUT_MS"), minimum=0),
        db_retry_after=_integer("DB_RETRY_AFTER", get("DB_RETRY_AFTER"), minimum=1),
        web_concurrency=_integer("WEB_CONCURRENCY", get("WEB_CONCURRENCY"), minimum=1),
        gunicorn_threads=_integer("GUNICORN_THREADS", get("GUNICORN_THREADS"), minimum=1),
        api_hosts=_integer("API_HOSTS", get("API_HOSTS"), minimum=1),
        port=_integer("PORT", get("PORT"), minimum=1),
        bind_host=get("BIND_HOST").strip(),
        log_level=_choice("LOG_LEVEL", get("LOG_LEVEL"), ("debug", "info", "warning", "error", "critical")),
        # JSON lines where machines read the logs, readable lines where people do.
        log_format=_choice(
            "LOG_FORMAT",
            get("LOG_FORMAT") or ("json" if app_env in ("production", "preprod") else "text"),
            ("json", "text"),
        ),
        max_content_length=_integer("MAX_CONTENT_LENGTH", get("MAX_CONTENT_LENGTH"), minimum=1),
        token_ttl_seconds=_integer("TOKEN_TTL_SECONDS", get("TOKEN_TTL_SECONDS"), minimum=60),
        dashboard_cache_seconds=_number("DASHBOARD_CACHE_SECONDS", get("DASHBOARD_CACHE_SECONDS"), positive=False),
        login_max_failures_per_account=_integer(
            "LOGIN_MAX_FAILURES_PER_ACCOUNT", get("LOGIN_MAX_FAILURES_PER_ACCOUNT"), minimum=1
        ),
        login_max_failures_per_address=_integer(
            "LOGIN_MAX_FAILURES_PER_ADDRESS", get("LOGIN_MAX_FAILURES_PER_ADDRESS"), minimum=1
        ),
        login_failure_window_seconds=_integer(
            "LOGIN_FAILURE_WINDOW_SECONDS", get("LOGIN_FAILURE_WINDOW_SECONDS"), minimum=1
        ),
        trusted_proxies=_integer("TRUSTED_PROXIES", get("TRUSTED_PROXIES"), minimum=0),
        cors_origins=_origins("CORS_ORIGINS", get("CORS_ORIGINS")),
        cors_allow_credentials=_boolean("CORS_ALLOW_CREDENTIALS", get("CORS_ALLOW_CREDENTIALS")),
        hsts_max_age=_integer("HSTS_MAX_AGE", get("HSTS_MAX_AGE"), minimum=0),
    )
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if s.db_pool_min_connections > s.db_pool_max_connections:
        raise ConfigError(
            f"DB_POOL_MIN_CONNECTIONS ({s.db_pool_min_connections}) must not be greater than "
            f"DB_POOL_MAX_CONNECTIONS ({s.db_pool_max_connections}); lower the first or raise the second."
        )
    if s.db_pool_warn_threshold > 1:
        raise ConfigError(f"DB_POOL_WARN_THRESHOLD is a fraction of the pool (0 to 1), got {s.db_pool_warn_threshold}.")
    if s.port > 65535:
        raise ConfigError(f"PORT must be a TCP port (1 to 65535), got {s.port}.")
    if s.cors_allow_credentials and "*" in s.cors_origins:
        raise ConfigError(
            "CORS_ALLOW_CREDENTIALS=true with CORS_ORIGINS=* would let any site send credentialed requests; "
            "list the allowed origins instead."
        )
    if not s.database_url:
        raise ConfigError("DATABASE_URL is not set; set it to postgresql://user:password@host:5432/dbname.")
    if not s.database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"DATABASE_URL must start with postgresql://, got {redact_url(s.database_url)!r}.")
    for name in ("SECRET_KEY", "HEALTH_API_TOKEN"):
        value = getattr(s, name.lower())
        if not value:
            raise ConfigError(
                f"{name} is not set; generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'."
            )
        if s.app_env in ("production", "preprod") and (value in DEV_DEFAULT_SECRETS or len(value) < 32):
            raise ConfigError(
                f"{name} is a development default or shorter than 32 characters, which {s.app_env} refuses; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'."
            )


def settings_as_flask_config(settings: Settings) -> dict[str, object]:
    """Return the Flask config keys derived from the settings."""
    return {
        "SETTINGS": settings,
        "SECRET_KEY": settings.secret_key,
        "MAX_CONTENT_LENGTH": settings.max_content_length,
        "JSON_SORT_KEYS": False,
    }


SETTING_NAMES = tuple(field.name.upper() for field in fields(Settings))
