"""Settings: every bad value fails fast with a sentence naming the variable; precedence of sources."""

from __future__ import annotations

import pytest

from apps.api.app import config, create_app
from apps.api.app.config import DEV_DEFAULT_SECRETS, ConfigError, load_settings

STRONG_SECRET = "k3y-" + "x" * 40
STRONG_TOKEN = "t0ken-" + "y" * 40
PRODUCTION = {
    "APP_ENV": "production",
    "DATABASE_URL": "postgresql://rentals:s3cret@db.internal:5432/rentals",
    "SECRET_KEY": STRONG_SECRET,
    "HEALTH_API_TOKEN": STRONG_TOKEN,
}


@pytest.fixture(autouse=True)
def project_root(tmp_path, monkeypatch):
    """Read .env files from an empty folder, so the repository's own files never leak in."""
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path)
    return tmp_path


def production(**changes: str | None) -> dict[str, str]:
    """Return valid production settings with some changed (None: left out)."""
    values = {**PRODUCTION, **changes}
    return {key: value for key, value in values.items() if value is not None}


def test_valid_production_settings_load():
    settings = load_settings(production(DB_POOL_TIMEOUT="2.5", DB_POOL_MAX_CONNECTIONS="12"), environ={})
    assert settings.app_env == "production"
    assert settings.db_pool_timeout == 2.5
    assert settings.db_pool_max_connections == 12
    assert settings.db_pool_mode == "pool"
    assert "s3cret" not in settings.database_url_redacted()


@pytest.mark.parametrize(
    "changes",
    [
        {"DB_POOL_MIN_CONNECTIONS": "6", "DB_POOL_MAX_CONNECTIONS": "5"},
        {"DB_POOL_MAX_CONNECTIONS": "ten"},
        {"DB_POOL_MIN_CONNECTIONS": "2.5"},
        {"DB_POOL_MIN_CONNECTIONS": "-1"},
        {"DB_POOL_MAX_CONNECTIONS": "0"},
        {"DB_POOL_MAX_CONNECTIONS": ""},
        {"DB_POOL_MAX_WAITING": "-1"},
        {"DB_POOL_TIMEOUT": "0"},
        {"DB_POOL_TIMEOUT": "-1"},
        {"DB_POOL_TIMEOUT": "soon"},
        {"DB_POOL_TIMEOUT": "nan"},
        {"DB_POOL_TIMEOUT": "inf"},
        {"DB_POOL_MAX_LIFETIME": "0"},
        {"DB_POOL_IDLE_TIMEOUT": "-5"},
        {"DB_POOL_LEAK_THRESHOLD": "0"},
        {"DB_POOL_PING_AFTER": "-1"},
        {"DB_POOL_WARN_THRESHOLD": "1.5"},
        {"DB_POOL_WARN_THRESHOLD": "0"},
        {"DB_CONNECT_TIMEOUT": "0"},
        {"DB_STATEMENT_TIMEOUT_MS": "-1"},
        {"DB_RETRY_AFTER": "0"},
        {"WEB_CONCURRENCY": "0"},
        {"PORT": "70000"},
        {"PORT": "http"},
        {"LOG_LEVEL": "loud"},
        {"DB_POOL_MODE": "pgbouncer"},
        {"DB_POOLER": "pgpool"},
        {"GUNICORN_TIMEOUT": "0"},
        {"DB_REQUEST_BUDGET_MS": "60000"},
        {"DB_REQUEST_BUDGET_MS": "soon"},
        {"APP_ENV": "staging"},
        {"DATABASE_URL": None},
        {"DATABASE_URL": "  "},
        {"DATABASE_URL": "mysql://rentals:s3cret@db/rentals"},
        {"DATABASE_URL": "postgresql://rentals:s3cret@db1:5432,db2:5432/rentals"},
        {"DATABASE_URL": "postgresql://rentals:s3cret@db1:5432,db2:5432/rentals?target_session_attrs=any"},
        {"DATABASE_URL": "postgresql://rentals:s3cret@db.internal/rentals?target_session_attrs=standby"},
        {"DATABASE_URL": "postgresql://rentals:s3cret@db.internal/rentals?target=primary"},
        {"SECRET_KEY": None},
        {"HEALTH_API_TOKEN": None},
        {"SECRET_KEY": "short"},
        {"HEALTH_API_TOKEN": "short"},
        {"DB_POOL_SIZE": "5"},
        {"PGBOUNCER_ADMIN_URL": "pgbouncer://monitor:s3cret@pooler:6432/pgbouncer"},
        {"PGBOUNCER_ADMIN_URL": "postgresql://monitor:s3cret@pooler:6432/rentals"},
        {"PGBOUNCER_ADMIN_URL": "postgresql://monitor:s3cret@pooler:6432/pgbouncer", "DB_POOLER": "none"},
    ],
    ids=lambda changes: ",".join(f"{name}={value!r}" for name, value in changes.items()),
)
def test_bad_setting_is_refused_with_a_sentence_naming_it(changes):
    with pytest.raises(ConfigError) as caught:
        load_settings(production(**changes), environ={})
    message = str(caught.value)
    for name in changes:
        assert name in message
    assert message.endswith("."), message
    assert "s3cret" not in message, "the database password leaked into an error message"


@pytest.mark.parametrize("attrs", ["read-write", "primary"])
def test_database_url_may_list_several_hosts_that_libpq_tries_for_a_writable_one(attrs):
    url = f"postgresql://rentals:s3cret@db1:5432,db2:5433/rentals?target_session_attrs={attrs}"
    settings = load_settings(production(DATABASE_URL=url), environ={})
    assert settings.database_url == url
    assert settings.database_url_redacted() == url.replace("s3cret", "***")


@pytest.mark.parametrize("env", ["production", "preprod"])
@pytest.mark.parametrize("name", ["SECRET_KEY", "HEALTH_API_TOKEN"])
@pytest.mark.parametrize("secret", sorted(DEV_DEFAULT_SECRETS))
def test_production_refuses_development_default_secrets(env, name, secret):
    with pytest.raises(ConfigError, match=name):
        load_settings(production(APP_ENV=env, **{name: secret}), environ={})


def test_pgbouncer_admin_url_is_optional_and_read_behind_pgbouncer():
    assert load_settings(production(), environ={}).pgbouncer_admin_url == ""
    url = "postgresql://monitor:s3cret@pooler:6432/pgbouncer"
    settings = load_settings(production(DB_POOLER="pgbouncer", PGBOUNCER_ADMIN_URL=url), environ={})
    assert settings.pgbouncer_admin_url == url
    assert settings.pgbouncer_admin_url_redacted() == "postgresql://monitor:***@pooler:6432/pgbouncer"


@pytest.mark.parametrize("env", ["dev", "test"])
def test_development_accepts_its_default_secrets(env):
    settings = load_settings(
        production(APP_ENV=env, SECRET_KEY="dev-secret-key-change-me", HEALTH_API_TOKEN="dev-health-token"),
        environ={},
    )
    assert settings.secret_key == "dev-secret-key-change-me"


def test_app_env_picks_its_env_file(project_root):
    (project_root / ".env.test").write_text("DATABASE_URL=postgresql://a@h/test\nDB_POOL_MAX_CONNECTIONS=7\n")
    (project_root / ".env.dev").write_text("DATABASE_URL=postgresql://a@h/dev\nDB_POOL_MAX_CONNECTIONS=8\n")
    secrets = {"SECRET_KEY": "k", "HEALTH_API_TOKEN": "t"}
    test = load_settings({**secrets, "APP_ENV": "test"}, environ={})
    dev = load_settings(secrets, environ={})
    assert (test.database_url, test.db_pool_max_connections) == ("postgresql://a@h/test", 7)
    assert (dev.database_url, dev.db_pool_max_connections) == ("postgresql://a@h/dev", 8)


def test_real_environment_wins_over_the_env_file(project_root):
    (project_root / ".env.test").write_text(
        "DATABASE_URL=postgresql://a@h/file\nSECRET_KEY=k\nHEALTH_API_TOKEN=t\nDB_POOL_MAX_CONNECTIONS=7\n"
    )
    environ = {"APP_ENV": "test", "DB_POOL_MAX_CONNECTIONS": "9"}
    settings = load_settings(environ=environ)
    assert settings.db_pool_max_connections == 9
    assert settings.database_url == "postgresql://a@h/file"


def test_overrides_win_over_the_real_environment(project_root):
    (project_root / ".env.test").write_text("DB_POOL_MAX_CONNECTIONS=7\n")
    environ = {
        "APP_ENV": "test",
        "DATABASE_URL": "postgresql://a@h/env",
        "SECRET_KEY": "k",
        "HEALTH_API_TOKEN": "t",
        "DB_POOL_MAX_CONNECTIONS": "9",
    }
    settings = load_settings({"DB_POOL_MAX_CONNECTIONS": "3", "DATABASE_URL": "postgresql://a@h/override"}, environ)
    assert settings.db_pool_max_connections == 3
    assert settings.database_url == "postgresql://a@h/override"


def test_app_env_from_overrides_wins_over_the_environment(project_root):
    (project_root / ".env.test").write_text("DB_POOL_MAX_CONNECTIONS=7\n")
    (project_root / ".env.preprod").write_text("DB_POOL_MAX_CONNECTIONS=8\n")
    base = {"DATABASE_URL": "postgresql://a@h/db", "SECRET_KEY": "k", "HEALTH_API_TOKEN": "t"}
    settings = load_settings({**base, "APP_ENV": "test"}, environ={"APP_ENV": "preprod"})
    assert settings.app_env == "test"
    assert settings.db_pool_max_connections == 7


def test_production_template_is_never_loaded(project_root):
    (project_root / ".env.production.template").write_text(
        f"DATABASE_URL=postgresql://a@h/db\nSECRET_KEY={STRONG_SECRET}\nHEALTH_API_TOKEN={STRONG_TOKEN}\n"
    )
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_settings({"APP_ENV": "production"}, environ={})


def test_create_app_refuses_a_bad_setting():
    with pytest.raises(ConfigError, match="DB_POOL_TIMEOUT"):
        create_app(production(DB_POOL_TIMEOUT="0"))
