"""The API at another git revision, for a paired A/B in the same run (BENCH_BASELINE_REF).

The ref's commit is exported with `git archive` into a folder of the run (under the ignored
bench/results/), and served from there by its own gunicorn.conf.py, so its code, config
module included, stays its own. An export rather than `git worktree add`: nothing is
registered in the repository, so a run killed before its cleanup leaves only an ignored
folder behind, never a stale worktree. The current code prepares the database; the two
revisions must agree on its schema.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .settings import ROOT, BenchConfigError


@dataclass(frozen=True)
class Baseline:
    """A revision of the project exported for serving: the ref asked for, its commit and folder."""

    ref: str
    commit: str
    short: str
    subject: str
    root: Path

    @property
    def app(self) -> str:
        """Return the app name it runs under: api@<short sha>."""
        return f"api@{self.short}"

    def describe(self) -> dict[str, str]:
        """Return what results.json keeps about it."""
        return {"ref": self.ref, "commit": self.commit, "short": self.short, "subject": self.subject, "app": self.app}


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=False)


def export(ref: str, root: Path) -> Baseline:
    """Export the commit `ref` names into the new folder `root`; raise BenchConfigError if git cannot."""
    found = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if found.returncode != 0:
        raise BenchConfigError(f"BENCH_BASELINE_REF={ref!r} names no commit of this repository.")
    commit = found.stdout.decode().strip()
    short = _git("rev-parse", "--short", commit).stdout.decode().strip()
    subject = _git("log", "-1", "--format=%s", commit).stdout.decode(errors="replace").strip()
    archive = _git("archive", "--format=tar", commit)
    if archive.returncode != 0:
        raise BenchConfigError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace')[-500:]}")
    root.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    return Baseline(ref, commit, short, subject, root)
