"""One benchmark run's pieces: its database, its apps, its plan, its measurements and results.

bench/run.py (make bench) and bench/profile.py (make bench-profile) drive a Bench through
the steps they need; neither is imported here, so the import graph has no cycle.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from apps.api.app.config import SETTING_NAMES

from . import analysis, baseline, client, cpu, dataset, load, machine, pooler, procs, pyspy, servers
from .settings import ALL_APPS, ALL_SCENARIOS, PGBOUNCER_APPS, ROOT, BenchSettings

logger = logging.getLogger("bench")

STAND_IN_PATH = "/api/health/db/test"
# Bookings start this far ahead, past anything the seed books, so 409s come from our own writes.
POST_WINDOW_OFFSET_DAYS = 400

SCENARIO_PATHS = {
    "customer": "GET /api/customers/<random id>",
    "rentals_list": "GET /api/rentals?limit=50",
    "rentals_deep": "GET /api/rentals?limit=50&cursor=<cursor after BENCH_DEEP_ROWS rows>",
    "dashboard": "GET /api/dashboard",
    "rentals_post": "POST /api/rentals (random active product and customer, 1-7 days, in a future window)",
    "mixed": "BENCH_MIX of the above",
}


class Bench:
    """One benchmark run: its database, its apps, its plan and its results."""

    def __init__(self, settings: BenchSettings, stack: contextlib.ExitStack) -> None:
        self.settings = settings
        self.stack = stack
        self.run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir = ROOT / "bench" / "results" / self.run_id
        self.logs_dir = self.run_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = Path(settings.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.wrk = load.ensure_wrk()
        self.health_token = secrets.token_urlsafe(32)
        self.base_env = self._base_env()
        self.data: dataset.Dataset | None = None
        self.specs: dict[str, servers.AppSpec] = dict(servers.APPS)
        self.baseline: baseline.Baseline | None = None
        self.running: dict[str, servers.RunningApp] = {}
        self.pooler: pooler.Pooler | None = None
        self.token: str | None = None
        self.deep: dict[str, Any] | None = None
        self.params_path = self.run_dir / "params.lua"
        self.availability: dict[str, str | None] = {}  # scenario: None when measurable, else why not
        self.customer_path_api = STAND_IN_PATH
        self.results: dict[str, Any] = {
            "meta": {
                "run_id": self.run_id,
                "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "settings": settings.as_dict(),
                "machine": machine.describe(),
                "load_average_start": machine.load_average(),
                "wrk": load.wrk_version(self.wrk),
            },
            "points": [],
            "profiles": [],
        }

    # -- setup -----------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        s = self.settings
        env = {
            "APP_ENV": s.app_env,
            "SECRET_KEY": secrets.token_urlsafe(32),
            "HEALTH_API_TOKEN": self.health_token,
            "WEB_CONCURRENCY": str(s.workers),
            "GUNICORN_THREADS": str(s.threads),
            "TOKEN_TTL_SECONDS": "7200",
            "PYTHONUNBUFFERED": "1",
        }
        if s.threads > 10:
            # gunicorn.conf.py refuses more threads than connections per pool.
            env["DB_POOL_MAX_CONNECTIONS"] = str(s.threads)
        # None of the API's settings leak in from the caller's shell: the run sets what it needs.
        own = set(SETTING_NAMES) | {"APP_ENV", "PROMETHEUS_MULTIPROC_DIR"}
        inherited = {k: v for k, v in os.environ.items() if k not in own and not k.startswith(("BENCH_", "DB_"))}
        return {**inherited, **env}

    def export_baseline(self) -> None:
        """Export the API at BENCH_BASELINE_REF into the run folder as app api@<sha>; removed on exit."""
        ref = self.settings.baseline_ref
        if not ref:
            return
        root = self.run_dir / "baseline"
        # Registered before the export, so a half-written folder goes too; apps started later stop first.
        self.stack.callback(shutil.rmtree, root, ignore_errors=True)
        self.baseline = baseline.export(ref, root)
        spec = servers.baseline_spec(self.baseline.app, ref, root)
        self.specs[spec.name] = spec
        logger.info("baseline %s is %s (%s), exported to %s", ref, self.baseline.short, self.baseline.subject, root)

    def with_baseline(self, names: list[str]) -> list[str]:
        """Return `names` with the baseline app right after api, so the pair runs back to back."""
        if self.baseline is None or "api" not in names:
            return names
        at = names.index("api") + 1
        return [*names[:at], self.baseline.app, *names[at:]]

    def start_database(self) -> None:
        """Start PostgreSQL in a temporary folder and fill it; stopped and removed on exit."""
        workdir = Path(tempfile.mkdtemp(prefix="rentals-bench-"))
        self.stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        server = dataset.start_server(workdir)
        self.stack.callback(server.remove)
        logger.info("postgresql %s:%s up; preparing the data set", server.host, server.port)
        self.data = dataset.prepare(server, self.settings, self.base_env)
        self.base_env["BENCH_CUSTOMER_COLUMNS"] = ",".join(self.data.facts["customer_columns"])
        logger.info(
            "data set ready (%s): %s",
            self.data.seeded_by,
            {k: v for k, v in self.data.facts.items() if k in ("customers", "products", "rentals", "database_size")},
        )

    def wants_pgbouncer(self) -> bool:
        """Return True when a scenario of the run measures an app behind PgBouncer that BENCH_APPS selects."""
        s = self.settings
        return any(name in PGBOUNCER_APPS for scenario in s.scenarios for name in s.apps_for(scenario))

    def start_pgbouncer(self) -> None:
        """Start the run's PgBouncer for the apps behind it (bench/pooler.py); stopped on exit, after them."""
        assert self.data is not None
        self.pooler = pooler.start(self.data, self.settings, self.base_env, self.stack, self.logs_dir)

    def start_apps(self, names: list[str]) -> None:
        """Start each named app; each is stopped on exit."""
        assert self.data is not None
        min_id = self.data.facts["customers"]["min_id"]
        for name in names:
            spec = self.specs[name]
            env = dict(self.base_env)
            if spec.behind_pgbouncer:
                assert self.pooler is not None, "start_pgbouncer() comes before the apps behind it"
                env["DATABASE_URL"] = self.pooler.url
            if spec.kind == "peer" or spec.server == "granian":
                # Peers run the API's gunicorn.conf.py settings, and granian's workers make a
                # folder named after their server: give them one of their own in the run's folder
                # rather than one in /tmp per start.
                metrics_dir = self.run_dir / "metrics" / name
                metrics_dir.mkdir(parents=True, exist_ok=True)
                env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            ready = "/api/health" if spec.kind == "api" else f"/api/customers/{min_id}"
            running = servers.start_app(spec, self.settings, env, self.logs_dir, ready)
            self.stack.callback(procs.stop_process, running.process)
            self.running[name] = running

    def authenticate(self) -> None:
        """Log in as the admin the dataset created, or fall back to HEALTH_API_TOKEN."""
        assert self.data is not None
        api = self.any_api()
        if self.data.domain.has_login and self.data.admin_password and api is not None:
            self.token = client.login(api.port, dataset.ADMIN_EMAIL, self.data.admin_password)
            logger.info("logged in as %s", dataset.ADMIN_EMAIL)
        else:
            self.token = None

    def any_api(self) -> servers.RunningApp | None:
        """Return a running instance of the API (the direct one in pool mode first), or None."""
        for name in ALL_APPS:
            if name in self.running and self.running[name].spec.kind == "api":
                return self.running[name]
        return None

    def decide_scenarios(self) -> None:
        """Record which scenarios can run now, and why the others cannot."""
        assert self.data is not None
        domain = self.data.domain
        rule = domain.customer_rule
        if rule and self.token:
            self.customer_path_api = rule.split("<", 1)[0] + "%d"
        waiting = "waiting on the domain (issue 3): "
        seeded = self.data.seeded_by == "project" and self.data.facts.get("rentals", {}).get("count", 0) > 0
        checks = {
            "customer": None,
            "rentals_list": None
            if domain.has_route("/api/rentals") and seeded and self.token
            else waiting + "GET /api/rentals, the seed command or login",
            "dashboard": None
            if domain.has_route("/api/dashboard") and seeded and self.token
            else waiting + "GET /api/dashboard, the seed command or login",
            "rentals_post": None
            if domain.has_route("/api/rentals", "POST") and self.data.facts.get("active_product_ids") and self.token
            else waiting + "POST /api/rentals, products or login",
        }
        checks["rentals_deep"] = checks["rentals_list"]
        mix_kinds = [part.split(":")[0] for part in self.settings.mix.split(",") if part.strip()]
        blocked = [kind for kind in mix_kinds if checks.get(kind)]
        checks["mixed"] = (waiting + f"the mix needs {', '.join(blocked)}") if blocked else None
        self.availability = {name: checks[name] for name in ALL_SCENARIOS}

    def find_deep_cursor(self) -> None:
        """Walk the rentals list to BENCH_DEEP_ROWS and keep that cursor for the deep-page scenario."""
        if self.availability.get("rentals_deep") is not None or "rentals_deep" not in self.settings.scenarios:
            return
        api = self.any_api()
        if api is None:
            self.availability["rentals_deep"] = "the API is not among BENCH_APPS"
            return
        try:
            self.deep = client.walk_rentals(api.port, self.token, self.settings.deep_rows)
        except client.APIError as exc:
            self.availability["rentals_deep"] = f"could not reach a deep page: {exc}"
            return
        logger.info(
            "deep cursor after %s rows (%s pages of %s, %.1f s)",
            self.deep["rows_skipped"],
            self.deep["pages"],
            self.deep["page_size"],
            self.deep["seconds"],
        )

    def write_params(self) -> None:
        """Write the Lua data file every wrk run loads."""
        assert self.data is not None
        facts = self.data.facts
        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        deep_path = "/api/rentals?limit=50"
        if self.deep:
            deep_path += "&cursor=" + quote(self.deep["cursor"], safe="")
        load.write_params(
            self.params_path,
            {
                "customer_path": "/api/customers/%d",
                "customer_min": facts["customers"]["min_id"],
                "customer_max": facts["customers"]["max_id"],
                "rentals_path": "/api/rentals?limit=50",
                "deep_path": deep_path,
                "dashboard_path": "/api/dashboard",
                "rentals_post_path": "/api/rentals",
                "product_ids": facts.get("active_product_ids") or [1],
                "post_window_start": int((today + dt.timedelta(days=POST_WINDOW_OFFSET_DAYS)).timestamp()),
                "post_window_days": self.settings.post_window_days,
            },
        )

    # -- the plan --------------------------------------------------------------------

    def targets(self) -> list[tuple[str, str]]:
        """Return the (scenario, app) pairs to measure, in their forward order."""
        pairs = []
        for scenario in self.settings.scenarios:
            if self.availability.get(scenario) is not None:
                continue
            pairs += [(scenario, name) for name in self.with_baseline(self.settings.apps_for(scenario))]
        return pairs

    def lua_env(self, scenario: str, app_name: str) -> dict[str, str]:
        """Return the environment wrk's script reads for one (scenario, app)."""
        env = {
            "BENCH_SCENARIO": scenario,
            "BENCH_PARAMS": str(self.params_path),
            "BENCH_MIX": self.settings.mix,
            "BENCH_TOKEN": self.token or self.health_token,
        }
        if self.specs[app_name].kind == "api":
            env["BENCH_CUSTOMER_PATH"] = self.customer_path_api
            if self.customer_path_api == STAND_IN_PATH:
                env["BENCH_TOKEN"] = self.health_token
        return env

    def plan(self) -> list[tuple[int, int, str, str]]:
        """Return every point as (round, connections, scenario, app), in the order they run."""
        targets = self.targets()
        points = []
        for round_no in range(1, self.settings.rounds + 1):
            sequence = [(c, scenario, name) for c in self.settings.connections for scenario, name in targets]
            if round_no % 2 == 0:
                sequence.reverse()
            points += [(round_no, c, scenario, name) for c, scenario, name in sequence]
        return points

    # -- measuring -------------------------------------------------------------------

    def warm_up(self) -> None:
        """Run each (scenario, app) once at the highest connection count; nothing is kept."""
        s = self.settings
        if not s.warmup:
            return
        for scenario, name in self.targets():
            with contextlib.suppress(RuntimeError):
                load.run_wrk(
                    self.wrk,
                    self.running[name].url,
                    connections=max(s.connections),
                    duration=s.warmup,
                    timeout=s.timeout,
                    lua_env=self.lua_env(scenario, name),
                )
            self.settle(self.running[name])

    def settle(self, running: servers.RunningApp) -> None:
        """Wait until the app has served what wrk left queued, so it never runs during the next point."""
        waited = cpu.wait_idle(running.process.pid)
        if waited > 1:
            logger.info("%s took %.1f s to finish the requests queued when wrk stopped", running.spec.name, waited)

    def measure_all(self) -> None:
        """Run the plan, saving results.json after every point."""
        s = self.settings
        plan = self.plan()
        per_point = s.duration + s.point_warmup + 0.6
        estimate = len(plan) * per_point + len(self.targets()) * s.warmup
        logger.info("%s points, about %.1f minutes", len(plan), estimate / 60)
        assert self.data is not None
        database_pid = cpu.postmaster_pid(self.data.server.data_dir)
        pooler_pid = self.pooler.pid if self.pooler else None
        for seq, (round_no, connections, scenario, name) in enumerate(plan, start=1):
            running = self.running[name]
            point = load.Point(scenario, name, connections, round_no, seq)
            point_env = self.lua_env(scenario, name)
            load_before = machine.load_average()
            try:
                if not running.alive():
                    raise RuntimeError(f"{name} is not running (exit {running.process.returncode})")
                if s.point_warmup:
                    load.run_wrk(
                        self.wrk,
                        running.url,
                        connections=connections,
                        duration=s.point_warmup,
                        timeout=s.timeout,
                        lua_env=point_env,
                    )
                stats_before = self.pooler.stats() if self.pooler and running.spec.behind_pgbouncer else {}
                before = cpu.snapshot(running.process.pid, database_pid, pooler_pid)
                load.measure(self.wrk, running.url, point, duration=s.duration, timeout=s.timeout, lua_env=point_env)
                after = cpu.snapshot(running.process.pid, database_pid, pooler_pid)
                point.cpu_us = cpu.per_request_us(before, after, point.requests)
                if stats_before:
                    point.pgbouncer = pooler.point_delta(stats_before, self.pooler.stats())
                self.settle(running)
            except RuntimeError as exc:
                point.failed = str(exc)[:500]
                logger.error("point %s failed: %s", seq, point.failed)
            record = point.as_dict()
            record["load_average"] = load_before
            self.results["points"].append(record)
            logger.info(
                "[%3d/%d] round %s c=%-3s %-12s %-15s %8.0f req/s  p50 %7.1f ms  p99 %7.1f ms  non-2xx %s (409: %s)"
                "  socket errors %s  cpu us/req %s",
                seq,
                len(plan),
                round_no,
                connections,
                scenario,
                name,
                point.rps,
                point.p50_ms,
                point.p99_ms,
                point.non_2xx,
                point.conflicts_409,
                point.socket_error_count,
                point.cpu_us,
            )
            self.save()

    def collect_pool_stats(self) -> None:
        """Keep the API's own pool stats after the load, per worker, for the report."""
        stats = {}
        for name, running in self.running.items():
            if running.spec.kind == "api" and running.alive():
                with contextlib.suppress(OSError, ValueError):
                    stats[name] = client.pool_stats(running.port, self.health_token)
        self.results["pool_stats"] = {
            name: {str(pid): s for pid, s in by_pid.items()} for name, by_pid in stats.items()
        }
        if self.pooler:
            self.results["pgbouncer_pools"] = self.pooler.pools()

    def run_profiles(self) -> None:
        """Profile the API and the hello ceiling under load with py-spy (after the measurements)."""
        s = self.settings
        if not s.profile_seconds:
            return
        connections = min(64, max(s.connections))
        # The API, the fastest peer (what the API pays above a bare pool) and the ceiling.
        peer = analysis.best_peer(analysis.Results(self.results)) if self.results["points"] else None
        jobs = [("customer", "api"), ("customer", peer or "psycopg2-fixed"), ("customer", "hello")]
        if self.availability.get("mixed") is None:
            jobs.append(("mixed", "api"))
        for scenario, name in jobs:
            if name not in self.running:
                continue
            try:
                summary = pyspy.profile_app(
                    self.wrk,
                    self.running[name],
                    self.lua_env(scenario, name),
                    scenario=scenario,
                    connections=connections,
                    seconds=s.profile_seconds,
                    timeout=s.timeout,
                    raw_path=self.run_dir / f"profile-{scenario}-{name}.txt",
                )
            except (RuntimeError, OSError) as exc:
                logger.error("profiling %s on %s failed: %s", name, scenario, exc)
                continue
            self.results["profiles"].append(summary)
        pyspy.write_markdown(self.results["profiles"], self.out_dir / "PROFILE.md", self.results["meta"])

    # -- results ---------------------------------------------------------------------

    def describe_setup(self) -> None:
        """Record the data set, the apps' commands and env, and the scenarios in results.json."""
        assert self.data is not None
        meta = self.results["meta"]
        meta["dataset"] = {
            "seeded_by": self.data.seeded_by,
            "commands": self.data.commands,
            "timings": {k: round(v, 2) for k, v in self.data.timings.items()},
            "facts": {k: v for k, v in self.data.facts.items() if k not in ("active_product_ids",)},
            "active_products": len(self.data.facts.get("active_product_ids") or []),
            "server_settings": dataset.SERVER_SETTINGS,
        }
        shown_env = ("APP_ENV", "WEB_CONCURRENCY", "GUNICORN_THREADS", "DB_POOL_MAX_CONNECTIONS", "TOKEN_TTL_SECONDS")
        meta["apps"] = {
            name: {
                "label": running.spec.label,
                "kind": running.spec.kind,
                "description": running.spec.description,
                "command": running.command,
                "env": {
                    **{k: self.base_env[k] for k in shown_env if k in self.base_env},
                    **running.spec.env,
                    "PORT": str(running.port),
                    "DATABASE_URL": (
                        f"postgresql://{pooler.POOLED_ROLE}:***@127.0.0.1:<pgbouncer port>/{dataset.DATABASE}"
                        if running.spec.behind_pgbouncer
                        else f"postgresql://{dataset.ROLE}:***@127.0.0.1:<port>/{dataset.DATABASE}"
                    ),
                    "SECRET_KEY": "<random, 43 chars>",
                    "HEALTH_API_TOKEN": "<random, 43 chars>",
                },
            }
            for name, running in self.running.items()
        }
        meta["scenarios"] = {
            name: {"path": SCENARIO_PATHS[name], "unavailable": self.availability.get(name)}
            for name in self.settings.scenarios
        }
        if self.baseline:
            meta["baseline"] = self.baseline.describe()
        if self.pooler:
            meta["pgbouncer"] = self.pooler.describe()
        meta["customer_path_api"] = self.customer_path_api
        meta["stand_in"] = self.customer_path_api == STAND_IN_PATH
        meta["deep"] = {k: v for k, v in (self.deep or {}).items() if k != "cursor"}
        meta["wrk_command"] = " ".join(
            load.wrk_argv("wrk", "http://127.0.0.1:PORT", 0, self.settings.duration, self.settings.timeout)
        ).replace("-c0", "-c<connections>")

    def save(self, *, final: bool = False) -> None:
        """Write results.json into the run folder; also into the output folder once the run is complete."""
        text = json.dumps(self.results, indent=1, default=str)
        (self.run_dir / "results.json").write_text(text)
        if final:
            (self.out_dir / "results.json").write_text(text)
