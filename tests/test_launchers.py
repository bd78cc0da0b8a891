"""make run and make cluster: they serve, print the demo login, and a SIGINT or SIGTERM sent to the
launcher alone (not to its process group, as a terminal's Ctrl-C would) stops every process.

make cluster needs Debian's PgBouncer and HAProxy (installed by make test as root) and
DB_POOLER=pgbouncer in the app: PgBouncer refuses the startup `options` the app sends otherwise."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess

import psutil
import psycopg2
import pytest

from devtools.embedded_pg import free_port, service_user
from devtools.launch import ROOT
from devtools.services import accepts_connections
from tests.helpers import wait_until
from tests.support.launchers import Launcher, gone, run_launcher

pytestmark = pytest.mark.slow

DEV_HEALTH_TOKEN = "dev-health-token"  # .env.dev's


@pytest.fixture(scope="module")
def dev_data_dir(tmp_path_factory):
    """One development database folder for the module: the first launcher seeds it, the others reuse it."""
    return tmp_path_factory.mktemp("devdb")


def request(port: int, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    """Send one request on a new connection to 127.0.0.1:port; return the status and the JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def log_in(launcher: Launcher) -> str:
    """Log in with the printed demo admin's login; return the token."""
    email, password = launcher.demo_login()
    status, body = request(launcher.port, "POST", "/api/auth/login", {"email": email, "password": password})
    assert status == 200, body
    return body["token"]


def stop_and_check_everything_gone(launcher: Launcher, signum: int, ports: list[int]) -> None:
    """Send `signum` to the launcher's pid alone; check it exits 0 and leaves no process and no open port."""
    started = [*launcher.descendants().values(), launcher.postmaster()]
    launcher.process.send_signal(signum)
    assert launcher.process.wait(timeout=45) == 0, launcher.output()[-3000:]
    assert wait_until(lambda: all(gone(process) for process in started), timeout=5), [
        process for process in started if not gone(process)
    ]
    assert not [port for port in ports if accepts_connections("127.0.0.1", port)]


@pytest.mark.parametrize(
    ("server", "signum"),
    [("gunicorn", signal.SIGINT), ("gunicorn", signal.SIGTERM), ("granian", signal.SIGINT)],
    ids=["SIGINT", "SIGTERM", "granian-SIGINT"],
)
def test_make_run_serves_and_a_signal_to_the_launcher_alone_stops_everything(dev_data_dir, tmp_path, server, signum):
    settings = {"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "4", "SERVER": server}
    with run_launcher("devtools.run_dev", dev_data_dir, tmp_path / "run_dev.log", settings) as launcher:
        assert f"Rentals API on http://127.0.0.1:{launcher.port} " in launcher.output()
        token = log_in(launcher)
        assert request(launcher.port, "GET", "/api/customers?limit=1", token=token)[0] == 200
        served_by = [p for p in launcher.descendants().values() if f"-m {server} " in " ".join(p.cmdline())]
        assert len(served_by) == 2  # the main process and its worker
        stop_and_check_everything_gone(launcher, signum, [launcher.port, int(launcher.env["DEV_DB_PORT"])])
    assert "database stopped" in launcher.output()


def test_the_printed_users_create_line_works_with_another_database_port(dev_data_dir, tmp_path):
    # run_launcher gives DEV_DB_PORT a free port, never .env.dev's 54329.
    with run_launcher("devtools.run_dev", dev_data_dir, tmp_path / "run_dev.log", {"WEB_CONCURRENCY": "1"}) as launcher:
        match = re.search(r"^  (\S.*\busers create --email (\S+) --role admin)$", launcher.output(), re.MULTILINE)
        assert match, launcher.output()[-3000:]
        line, email = match.groups()
        # Run as printed, from another terminal: nothing of the launcher's environment but a password.
        env = {name: value for name, value in os.environ.items() if name not in ("APP_ENV", "DATABASE_URL")}
        env["NEW_USER_PASSWORD"] = "a-newcomer-password"
        result = subprocess.run(
            ["/bin/sh", "-c", line],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"created admin {email}" in result.stdout
        login = {"email": email, "password": "a-newcomer-password"}
        status, body = request(launcher.port, "POST", "/api/auth/login", login)
        assert status == 200, body


@pytest.mark.pgbouncer
@pytest.mark.haproxy
@pytest.mark.timeout(120)
def test_make_cluster_balances_two_hosts_through_pgbouncer_and_sigterm_stops_everything(dev_data_dir, tmp_path):
    api_ports, bouncer_port, replica_port = [free_port(), free_port()], free_port(), free_port()
    settings = {
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": "4",
        "CLUSTER_DIR": str(tmp_path / "cluster"),
        "CLUSTER_API_PORTS": ",".join(map(str, api_ports)),
        "DEV_PGBOUNCER_PORT": str(bouncer_port),
        "DEV_REPLICA_PORT": str(replica_port),
    }
    with run_launcher("devtools.cluster", dev_data_dir, tmp_path / "cluster.log", settings) as launcher:
        output = launcher.output()
        assert f"Rentals API cluster on http://127.0.0.1:{launcher.port} " in output
        children = [process for process in launcher.descendants().values() if process.ppid() == launcher.process.pid]
        masters = {process.pid for process in children if "gunicorn" in " ".join(process.cmdline())}
        assert len(masters) == 2
        if os.geteuid() == 0:
            others = [process for process in children if process.pid not in masters]
            assert sorted(process.name() for process in others) == ["haproxy", "pgbouncer"]
            assert {process.username() for process in others} == {service_user()}

        # Requests land on both hosts: /api/health names the worker, whose parent is its host's master.
        hosts_seen: set[int] = set()

        def both_hosts_answered() -> bool:
            hosts_seen.add(psutil.Process(request(launcher.port, "GET", "/api/health")[1]["pid"]).ppid())
            return hosts_seen == masters

        assert wait_until(both_hosts_answered, timeout=10, interval=0), hosts_seen
        # The demo admin's token, issued by one host, works on both (round robin, a new connection each).
        token = log_in(launcher)
        assert [request(launcher.port, "GET", "/api/customers?limit=1", token=token)[0] for _ in range(4)] == [200] * 4
        status, body = request(launcher.port, "GET", "/api/health/db", token=DEV_HEALTH_TOKEN)
        assert status == 200 and body["database"]["reachable"], body
        # Each host reads PgBouncer's console (PGBOUNCER_ADMIN_URL) and counts both hosts.
        pooler = body["pooler"]
        assert (pooler["reachable"], pooler["database"], pooler["pool_mode"]) == (True, "rentals", "transaction"), body
        assert pooler["pool"]["cl_active"] >= 2 and pooler["capacity"]["fits"], pooler
        assert pooler["capacity"]["client_connections"] == 2 * 1 * 10  # 2 hosts x 1 worker x .env.dev's 10
        assert body["status"] == "healthy" and body["recommendations"]["advice"] == ["no change needed"], body
        # Replica routing is on: the hosts see the cluster's streaming replica replaying.
        assert wait_until(
            lambda: (
                request(launcher.port, "GET", "/api/health/db", token=DEV_HEALTH_TOKEN)[1]["replicas"][0]["state"]
                == "up"
            ),
            timeout=10,
        )

        # The hosts reach PostgreSQL through PgBouncer: its console (the printed line) shows their clients.
        console = re.search(r"PgBouncer's console: psql '(\S+)'", output).group(1)
        conn = psycopg2.connect(console, connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SHOW POOLS")
                names = [column.name for column in cur.description]
                pools = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()
        (pool,) = [pool for pool in pools if pool["database"] == "rentals"]
        assert pool["pool_mode"] == "transaction" and pool["cl_active"] >= 2, pools

        ports = [launcher.port, int(launcher.env["DEV_DB_PORT"]), bouncer_port, replica_port, *api_ports]
        stop_and_check_everything_gone(launcher, signal.SIGTERM, ports)
