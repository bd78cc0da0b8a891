"""The Debian programs the project runs for real: found, or installed with apt-get as root.

    python -m devtools.debian pgbouncer haproxy

PgBouncer and HAProxy (the tests' pooler pass and `make cluster`), Prometheus and promtool (the
alert rules' tests) and wrk (`make bench`)
come from Debian's packages. `DebianProgram.ensure()` returns the program's path,
installing the package first when it is missing and we are root; otherwise it raises
ProgramUnavailable with one sentence saying why and what to run.

A package's maintainer scripts start its system service (and enable it at boot). We run
our own instances with our own configuration, so an install here must leave none behind:
apt runs under a policy-rc.d that forbids starting services (the Docker convention,
honoured by invoke-rc.d and deb-systemd-invoke), and afterwards the service is stopped
and disabled in case something started it anyway.

As a command (what `make test` runs first): ensure each named program and print one line
for each; a missing one fails the command only under CI=true, where every test must run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
# Where Debian puts daemons; not on an ordinary user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
APT_TIMEOUT = 600


class ProgramUnavailable(RuntimeError):
    """A program is missing and could not be installed; the message says why in one sentence."""


@dataclass(frozen=True)
class DebianProgram:
    """A program from a Debian package, and the system service the package may start."""

    name: str
    package: str
    service: str | None = None

    def path(self) -> str | None:
        """Return the program's path when it is installed, else None."""
        return shutil.which(self.name, path=SEARCH_PATH)

    def ensure(self) -> str:
        """Return the program's path, installing its package first when missing and running as root.

        Raises ProgramUnavailable when it is missing and cannot be installed here.
        """
        found = self.path()
        if found:
            return found
        if os.geteuid() != 0:
            raise ProgramUnavailable(
                f"{self.name} is not installed and installing it needs root: sudo apt-get install -y {self.package}"
            )
        if not shutil.which("apt-get"):
            raise ProgramUnavailable(f"{self.name} is not installed and this system has no apt-get to install it")
        logger.info("%s is missing; installing debian's package %s", self.name, self.package)
        _apt_install(self.package)
        if self.service:
            _keep_service_stopped(self.service)
        found = self.path()
        if not found:
            raise ProgramUnavailable(f"apt-get installed {self.package} but {self.name} is still not found")
        return found


PGBOUNCER = DebianProgram("pgbouncer", "pgbouncer", service="pgbouncer")
HAPROXY = DebianProgram("haproxy", "haproxy", service="haproxy")
WRK = DebianProgram("wrk", "wrk")
# Debian's prometheus package ships promtool beside the server; both run from our own configuration.
PROMETHEUS = DebianProgram("prometheus", "prometheus", service="prometheus")
PROMTOOL = DebianProgram("promtool", "prometheus", service="prometheus")
# The programs `python -m devtools.debian NAME...` knows by name.
PROGRAMS = {program.name: program for program in (PGBOUNCER, HAPROXY, WRK, PROMETHEUS, PROMTOOL)}


def _apt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt run (another engineer's, unattended-upgrades) may hold the lock: wait for it.
    command = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "-qq", *args]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, stdin=subprocess.DEVNULL, check=False
    )


def _apt_install(package: str) -> None:
    with _services_never_start():
        result = _apt("install", "-y", "--no-install-recommends", package)
        if result.returncode != 0:
            # A fresh image has no package lists yet; fetch them once and try again.
            update = _apt("update")
            if update.returncode != 0:
                raise ProgramUnavailable(
                    f"apt-get update failed (no network or no Debian mirror?), so {package} "
                    f"cannot be installed: {_last_line(update)}"
                )
            result = _apt("install", "-y", "--no-install-recommends", package)
        if result.returncode != 0:
            raise ProgramUnavailable(f"apt-get install {package} failed: {_last_line(result)}")


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


@contextlib.contextmanager
def _services_never_start() -> Iterator[None]:
    """Forbid package scripts to start services for the duration of the block, unless a policy already exists."""
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text("#!/bin/sh\n# Written by devtools/debian.py for one apt-get run.\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)


def _keep_service_stopped(service: str) -> None:
    """Stop and disable the package's own service, should anything have started it."""
    quiet = {"capture_output": True, "timeout": 60, "check": False, "stdin": subprocess.DEVNULL}
    if Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "disable", "--now", service], **quiet)
    init_script = Path("/etc/init.d") / service
    if init_script.exists():
        subprocess.run([str(init_script), "stop"], **quiet)
        if shutil.which("update-rc.d"):
            subprocess.run(["update-rc.d", service, "disable"], **quiet)


def main(names: list[str]) -> int:
    """Ensure each named program; print one line each; fail on a missing one only under CI=true."""
    logging.basicConfig(level=logging.INFO, format="devtools.debian: %(message)s")
    required = os.environ.get("CI") == "true"
    missing = False
    for name in names:
        try:
            print(f"{name}: {PROGRAMS[name].ensure()}", flush=True)
        except ProgramUnavailable as exc:
            missing = True
            consequence = "CI=true needs it" if required else "the tests that need it will be skipped"
            print(f"{name}: unavailable, {consequence}: {exc}", flush=True)
    return 1 if missing and required else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
