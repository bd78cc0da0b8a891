"""A real Prometheus (Debian's package) scraping one API host with deploy/prometheus/alerts.yml loaded.

At the clocks the README recommends (scrapes and evaluations every 15 s, RentalsDatabaseDown's
`for: 30s`) one outage takes minutes to fire and clear; a test cannot wait that long. So
`Prometheus` takes its clocks as arguments: `interval` for scrapes and evaluations, and
`for_durations` to replace the `for:` of named alerts in a generated copy of alerts.yml. The
rules' expressions, labels and annotations are the file's own. Its configuration is generated
JSON (Prometheus reads YAML, of which JSON is a part); the scrape job is the one
deploy/prometheus/scrape.yml describes, aimed at one API port on loopback.

`outage()` stops the database, waits for an alert to fire, restarts it and waits for the
alert to clear, and returns both times; tests/test_prometheus_alerts.py runs it on short
clocks, and `python -m tests.support.prometheus` measures it on any clocks, with and without
light traffic, for the README's figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devtools.debian import PROMETHEUS
from devtools.embedded_pg import EmbeddedPostgres
from devtools.services import BackgroundServer
from tests.helpers import HEALTH_HEADERS, HEALTH_TOKEN, private_server, wait_until
from tests.support.gunicorn import ROOT, start_gunicorn, stop_gunicorn
from tests.support.load import send

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DATABASE_DOWN = "RentalsDatabaseDown"


def alert_rules(for_durations: Mapping[str, str]) -> str:
    """Return alerts.yml with the `for:` of each named alert replaced; raise ValueError if one has none."""
    text = ALERTS.read_text()
    for alert, duration in for_durations.items():
        # From the alert's line to its `for:`, never past the next alert.
        pattern = re.compile(rf"(- alert: {re.escape(alert)}\n(?:(?!\s*- alert:).*\n)*?\s*for: )\S+")
        text, count = pattern.subn(rf"\g<1>{duration}", text)
        if count != 1:
            raise ValueError(f"{ALERTS} has no `for:` in alert {alert}")
    return text


class Prometheus(BackgroundServer):
    """Prometheus on 127.0.0.1 and a free port, scraping /metrics of the API at `api_port` with `token`."""

    name = "prometheus"

    def __init__(
        self,
        folder: str | Path,
        api_port: int,
        token: str = HEALTH_TOKEN,
        *,
        interval: str = "1s",
        for_durations: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(folder)
        self.api_port = api_port
        self.token = token
        self.interval = interval
        self.for_durations = dict(for_durations or {})

    def write_config(self) -> None:
        """Write the alert rules (with the `for:` durations asked for), the token and prometheus.yml."""
        self.write_file("alerts.yml", alert_rules(self.for_durations))
        token = self.write_file("token", self.token)
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {
                    "job_name": "rentals-api",
                    "scrape_interval": self.interval,
                    "scrape_timeout": self.interval,
                    "metrics_path": "/metrics",
                    "authorization": {"type": "Bearer", "credentials_file": str(token)},
                    "static_configs": [{"targets": [f"127.0.0.1:{self.api_port}"]}],
                }
            ],
        }
        self.write_file("prometheus.yml", json.dumps(config, indent=2))

    def command(self) -> list[str]:
        """Run Prometheus in the foreground on this folder's configuration and storage."""
        return [
            PROMETHEUS.ensure(),
            f"--config.file={self.folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
        ]

    def ready(self) -> bool:
        """Return True once Prometheus answers /-/ready with 200."""
        try:
            return self._get("/-/ready")[0] == 200
        except OSError:
            return False

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _api(self, path: str) -> Any:
        status, body = self._get(path)
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", (status, reply)
        return reply["data"]

    def query(self, expr: str) -> list[float]:
        """Return the values of an instant query, one per series."""
        data = self._api("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        return [float(series["value"][1]) for series in data["result"]]

    def active_alerts(self, alert: str) -> list[dict[str, Any]]:
        """Return the active (pending or firing) alerts of that name: `state`, `labels`, `activeAt`..."""
        return [a for a in self._api("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == alert]


@contextmanager
def light_traffic(port: int, every: float = 0.5) -> Iterator[list[int]]:
    """Send GET /api/health/db/test (one query) every `every` s until the block ends; yield the statuses."""
    statuses: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            statuses.append(send(port, "GET", "/api/health/db/test", HEALTH_HEADERS, timeout=10).status or 0)

    thread = threading.Thread(target=run, name="light-traffic", daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(15)


def outage(
    server: EmbeddedPostgres, prometheus: Prometheus, alert: str = DATABASE_DOWN, timeout: float = 120
) -> dict[str, Any]:
    """Stop the server until `alert` fires, then start it until the alert clears; return the seconds each took.

    `fire_seconds` counts from the stop command, `clear_seconds` from the server accepting
    connections again; None when it did not happen within `timeout`. `labels` are the
    firing alert's.
    """

    def firing() -> list[dict[str, Any]]:
        return [a for a in prometheus.active_alerts(alert) if a["state"] == "firing"]

    stopping = time.monotonic()
    server.stop()
    fired = wait_until(firing, timeout=timeout, interval=0.1)
    fire_seconds = round(time.monotonic() - stopping, 1) if fired else None
    server.start()
    up = time.monotonic()
    cleared = wait_until(lambda: not prometheus.active_alerts(alert), timeout=timeout, interval=0.1)
    clear_seconds = round(time.monotonic() - up, 1) if cleared else None
    return {
        "fire_seconds": fire_seconds,
        "clear_seconds": clear_seconds,
        "labels": fired[0]["labels"] if fired else None,
    }


def measure(folder: Path, *, rounds: int, interval: str, for_duration: str, probe_interval: float) -> dict:
    """Run `rounds` outages without traffic and `rounds` with light traffic; return each round's figures."""
    figures: dict[str, list[dict[str, Any]]] = {"no traffic": [], "light traffic": []}
    with private_server() as server:
        process, port = start_gunicorn(server.dsn(), DB_PROBE_INTERVAL_SECONDS=probe_interval)
        try:
            with Prometheus(folder, port, interval=interval, for_durations={DATABASE_DOWN: for_duration}) as prom:
                assert wait_until(lambda: prom.query('rentals_database_up{target="primary"}') == [1.0], timeout=60)
                for _ in range(rounds):
                    figures["no traffic"].append(outage(server, prom))
                    with light_traffic(port) as statuses:
                        figures["light traffic"].append(outage(server, prom))
                    figures["light traffic"][-1]["requests"] = len(statuses)
        finally:
            stop_gunicorn(process)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Print the times to fire and to clear RentalsDatabaseDown at the clocks given, as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", default="1s", help="Prometheus' scrape and evaluation interval")
    parser.add_argument("--for", dest="for_duration", default="3s", help="RentalsDatabaseDown's for: duration")
    parser.add_argument("--probe-interval", type=float, default=1.0, help="DB_PROBE_INTERVAL_SECONDS")
    parser.add_argument("--folder", type=Path, required=True, help="an empty folder for Prometheus")
    args = parser.parse_args(argv)
    figures = measure(
        args.folder,
        rounds=args.rounds,
        interval=args.interval,
        for_duration=args.for_duration,
        probe_interval=args.probe_interval,
    )
    summary = {
        kind: {
            key: statistics.median(r[key] for r in rounds if r[key] is not None)
            for key in ("fire_seconds", "clear_seconds")
        }
        for kind, rounds in figures.items()
    }
    json.dump({"clocks": vars(args) | {"folder": str(args.folder)}, "rounds": figures, "median": summary}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
