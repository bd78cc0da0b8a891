"""The benchmark's knobs, read once from BENCH_* environment variables.

BENCH_QUICK=1 picks a smoke preset (about 2 to 3 minutes); any BENCH_* variable set
explicitly wins over the preset. Full defaults keep `make bench` under 30 minutes on the
2-core machine.

BENCH_APPS=api,hello picks apps by name (default: all of ALL_APPS). BENCH_BASELINE_REF=<git ref>
(main~3, a tag, a commit) adds a paired A/B: the API at that revision joins the run as the app
`api@<short sha>`, served like `api` from an export of that commit under bench/results/<run>/,
measured right after `api` wherever `api` is, and the report gets a section "A/B against <ref>"
with the ratio api / api@<sha>. It needs `api` among BENCH_APPS.

BENCH_POOLER_SCENARIOS (default customer,mixed) are the scenarios that also measure the API
behind PgBouncer in transaction mode, with its own pool (`api-pgbouncer`) and in null mode
(`api-pgbouncer-null`); the run starts one PgBouncer for them (bench/pooler.py).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"

ALL_APPS = (
    "api",
    "api-granian",
    "api-null",
    "api-pgbouncer",
    "api-pgbouncer-null",
    "psycopg2-seeds",
    "psycopg2-fixed",
    "sqlalchemy",
    "psycopg3",
    "fastapi-asyncpg",
    "hello",
)
# The API behind one PgBouncer (transaction mode) that the run starts when it measures either.
PGBOUNCER_APPS = ("api-pgbouncer", "api-pgbouncer-null")
ALL_SCENARIOS = ("customer", "rentals_list", "rentals_deep", "dashboard", "rentals_post", "mixed")
DEFAULT_MIX = "customer:60,rentals_list:20,rentals_post:20"

# name: (full default, quick default)
_PRESETS: dict[str, tuple[str, str]] = {
    "BENCH_DURATION": ("10", "2"),
    "BENCH_POINT_WARMUP": ("1", "0"),
    "BENCH_WARMUP": ("5", "1"),
    "BENCH_ROUNDS": ("2", "1"),
    "BENCH_CONNECTIONS": ("1,16,64,256", "16,64"),
    "BENCH_CUSTOMERS": ("100000", "10000"),
    "BENCH_PRODUCTS": ("10000", "1000"),
    "BENCH_RENTALS": ("1000000", "50000"),
    "BENCH_DEEP_ROWS": ("100000", "5000"),
    "BENCH_PROFILE_SECONDS": ("20", "5"),
    "BENCH_OUT": (str(BENCH_DIR), str(BENCH_DIR / "results" / "quick")),
}


class BenchConfigError(ValueError):
    """A BENCH_* variable has a value the benchmark cannot run with."""


@dataclass(frozen=True)
class BenchSettings:
    """Everything a run depends on; stored in results.json and quoted by the report."""

    quick: bool
    duration: int
    point_warmup: int
    warmup: int
    rounds: int
    connections: tuple[int, ...]
    workers: int
    threads: int
    customers: int
    products: int
    rentals: int
    seed: int
    timeout: int
    deep_rows: int
    scenarios: tuple[str, ...]
    apps: tuple[str, ...] | None
    baseline_ref: str | None
    null_scenarios: tuple[str, ...]
    pooler_scenarios: tuple[str, ...]
    mix: str
    app_env: str
    post_window_days: int
    profile_seconds: int
    out_dir: str

    def as_dict(self) -> dict:
        """Return the settings as plain JSON-ready values."""
        return asdict(self)

    def apps_for(self, scenario: str) -> list[str]:
        """Return the apps BENCH_APPS selects that measure `scenario`, in ALL_APPS order (the baseline apart).

        The customer read runs every app; the other scenarios run the API, plus null mode in
        BENCH_NULL_SCENARIOS; the API behind PgBouncer runs in BENCH_POOLER_SCENARIOS only.
        """
        names = set(ALL_APPS) - set(PGBOUNCER_APPS) if scenario == "customer" else {"api"}
        if scenario in self.null_scenarios:
            names.add("api-null")
        if scenario in self.pooler_scenarios:
            names.update(PGBOUNCER_APPS)
        return [name for name in ALL_APPS if name in names and (self.apps is None or name in self.apps)]


def _get(environ: dict[str, str], name: str, quick: bool, default: str | None = None) -> str:
    if name in environ and environ[name].strip():
        return environ[name].strip()
    if name in _PRESETS:
        return _PRESETS[name][1 if quick else 0]
    assert default is not None
    return default


def _int(environ: dict[str, str], name: str, quick: bool, default: str | None = None, minimum: int = 0) -> int:
    raw = _get(environ, name, quick, default)
    try:
        value = int(raw)
    except ValueError:
        raise BenchConfigError(f"{name} must be a whole number, got {raw!r}.") from None
    if value < minimum:
        raise BenchConfigError(f"{name} must be at least {minimum}, got {value}.")
    return value


def _names(raw: str, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in raw.split(",") if part.strip())
    if values == ("all",):
        return allowed
    unknown = [value for value in values if value not in allowed]
    if unknown:
        raise BenchConfigError(f"{name} names unknown values {unknown}; choose from {', '.join(allowed)}.")
    return values


def load_bench_settings(environ: dict[str, str] | None = None) -> BenchSettings:
    """Read the BENCH_* variables; raise BenchConfigError with a sentence on a bad one."""
    environ = dict(os.environ if environ is None else environ)
    quick = environ.get("BENCH_QUICK", "").strip().lower() in ("1", "true", "yes")
    raw_connections = _get(environ, "BENCH_CONNECTIONS", quick)
    try:
        connections = tuple(sorted({int(part) for part in raw_connections.split(",") if part.strip()}))
    except ValueError:
        raise BenchConfigError(
            f"BENCH_CONNECTIONS must be numbers like 1,16,64,256, got {raw_connections!r}."
        ) from None
    if not connections or connections[0] < 1:
        raise BenchConfigError(f"BENCH_CONNECTIONS needs at least one count of 1 or more, got {raw_connections!r}.")
    raw_apps = environ.get("BENCH_APPS", "").strip()
    apps = _names(raw_apps, ALL_APPS, "BENCH_APPS") if raw_apps else None
    baseline_ref = environ.get("BENCH_BASELINE_REF", "").strip() or None
    if baseline_ref and apps is not None and "api" not in apps:
        raise BenchConfigError("BENCH_BASELINE_REF compares against the api app; add api to BENCH_APPS.")
    settings = BenchSettings(
        quick=quick,
        duration=_int(environ, "BENCH_DURATION", quick, minimum=1),
        point_warmup=_int(environ, "BENCH_POINT_WARMUP", quick),
        warmup=_int(environ, "BENCH_WARMUP", quick),
        rounds=_int(environ, "BENCH_ROUNDS", quick, minimum=1),
        connections=connections,
        workers=_int(environ, "BENCH_WORKERS", quick, "2", minimum=1),
        threads=_int(environ, "BENCH_THREADS", quick, "8", minimum=1),
        customers=_int(environ, "BENCH_CUSTOMERS", quick, minimum=1),
        products=_int(environ, "BENCH_PRODUCTS", quick, minimum=1),
        rentals=_int(environ, "BENCH_RENTALS", quick),
        seed=_int(environ, "BENCH_SEED", quick, "42"),
        timeout=_int(environ, "BENCH_TIMEOUT", quick, "10", minimum=1),
        deep_rows=_int(environ, "BENCH_DEEP_ROWS", quick, minimum=1),
        scenarios=_names(_get(environ, "BENCH_SCENARIOS", quick, "all"), ALL_SCENARIOS, "BENCH_SCENARIOS"),
        apps=apps,
        baseline_ref=baseline_ref,
        null_scenarios=_names(
            _get(environ, "BENCH_NULL_SCENARIOS", quick, "customer,mixed"), ALL_SCENARIOS, "BENCH_NULL_SCENARIOS"
        ),
        pooler_scenarios=_names(
            _get(environ, "BENCH_POOLER_SCENARIOS", quick, "customer,mixed"), ALL_SCENARIOS, "BENCH_POOLER_SCENARIOS"
        ),
        mix=_get(environ, "BENCH_MIX", quick, DEFAULT_MIX),
        app_env=_get(environ, "BENCH_APP_ENV", quick, "production"),
        post_window_days=_int(environ, "BENCH_POST_WINDOW_DAYS", quick, "3650", minimum=30),
        profile_seconds=_int(environ, "BENCH_PROFILE_SECONDS", quick),
        out_dir=_get(environ, "BENCH_OUT", quick),
    )
    return settings
