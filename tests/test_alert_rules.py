"""The alert rules of deploy/prometheus/ pass promtool: syntax, the scrape config that loads them, unit tests.

Each rule in alerts.yml has unit tests (`promtool test rules`) in deploy/prometheus/tests/,
one file per topic, which pin when it goes pending, when it fires and what clears it; a rule
without one fails `test_every_alert_has_a_unit_test`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from devtools.debian import PROMTOOL

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy/prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
SCRAPE = PROMETHEUS_DIR / "scrape.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
PROMTOOL_TIMEOUT = 30


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run promtool with `args`; return the finished process (output as text)."""
    return subprocess.run(
        [PROMTOOL.ensure(), *args], cwd=cwd, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT, check=False
    )


def alert_names() -> list[str]:
    """Return the name of every alert in alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def alerts_tested_in(path: Path) -> set[str]:
    """Return the alerts whose firing a promtool unit test file checks (its alert_rule_test entries)."""
    tests = yaml.safe_load(path.read_text())["tests"]
    return {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}


@pytest.mark.promtool
def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", "--lint-fatal", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


@pytest.mark.promtool
def test_scrape_job_with_the_rules_passes_promtool_check_config(tmp_path):
    """An operator's prometheus.yml: scrape.yml's job as it is, plus alerts.yml as its rule file.

    check config also opens the bearer token file, which only the Prometheus host has
    (/etc/prometheus/rentals-health-token); the test points the job at a token of its own.
    """
    config = yaml.safe_load(SCRAPE.read_text())
    for job in config["scrape_configs"]:
        token = tmp_path / f"{job['job_name']}-token"
        token.write_text("a-health-token\n")
        job["authorization"]["credentials_file"] = str(token)
    config["rule_files"] = [str(ALERTS)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = promtool("check", "config", "--lint-fatal", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_there_are_rule_unit_tests():
    assert RULE_TESTS, "deploy/prometheus/tests/ holds no *.test.yml"


@pytest.mark.promtool
@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_rule_unit_tests_pass(path):
    # From the file's folder, as an operator runs it: its rule_files are relative to it.
    result = promtool("test", "rules", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    tested = set().union(*(alerts_tested_in(path) for path in RULE_TESTS))
    untested = [name for name in alert_names() if name not in tested]
    assert not untested, f"alerts without an alert_rule_test in deploy/prometheus/tests/: {untested}"
