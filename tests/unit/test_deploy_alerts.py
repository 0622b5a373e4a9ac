"""The alert rules fire: every rule of deploy/prometheus/alerts.yml has a
`promtool test rules` unit test in deploy/prometheus/alerts_test.yml in
which it fires (and usually one in which it must not), the rules never
select on a scrape job's name, and Alertmanager (compose) gets them.

promtool and amtool come from Debian's `prometheus` and
`prometheus-alertmanager` packages (.ci/run installs them); without them the
tests that run them skip and say so.

These test deployment files, not a Python module: hence a name without a
package prefix (tests/unit otherwise mirrors src as test_<package>_<module>.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTMANAGER = ROOT / "deploy" / "alertmanager"


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {package}; .ci/run does)")
    return path


def rules() -> list[dict[str, Any]]:
    config = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [r for g in config["groups"] for r in g["rules"]]


def unit_tests() -> list[dict[str, Any]]:
    return list(yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"])


def run(argv: list[str], cwd: Path = PROMETHEUS) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_rules_are_valid_promql() -> None:
    out = run([tool("promtool", "prometheus"), "check", "rules", "alerts.yml"])
    assert f"SUCCESS: {len(rules())} rules found" in out


def test_every_alert_passes_its_unit_tests() -> None:
    out = run([tool("promtool", "prometheus"), "test", "rules", "alerts_test.yml"])
    assert "SUCCESS" in out


def test_every_alert_has_a_test_in_which_it_fires() -> None:
    names = {r["alert"] for r in rules()}
    assert len(names) == len(rules()), "alert names are unique"
    fires: set[str] = set()
    tested: set[str] = set()
    for test in unit_tests():
        assert test["name"], "every test says what it shows"
        for case in test.get("alert_rule_test", []):
            tested.add(case["alertname"])
            if case["exp_alerts"]:
                fires.add(case["alertname"])
                for alert in case["exp_alerts"]:
                    # promtool compares annotations too: the rendered text is tested.
                    assert alert["exp_annotations"]["summary"], case["alertname"]
    assert tested <= names, f"tests of alerts that do not exist: {tested - names}"
    assert names <= fires, f"alerts never shown to fire: {sorted(names - fires)}"


def test_no_rule_depends_on_a_job_name() -> None:
    """On Kubernetes the job is the PodMonitor's (namespace/name/index): rules
    select on `component`, which compose and the PodMonitor both set."""
    for rule in rules():
        assert not re.search(r"\bjob\s*(=~|!=|!~|=)", rule["expr"]), rule["alert"]
        for text in rule["annotations"].values():
            assert "$labels.job" not in text, rule["alert"]
    target_rules = [r for r in rules() if re.search(r"\bup\{", r["expr"])]
    assert target_rules and all("component" in r["expr"] for r in target_rules)


def test_unit_tests_use_job_names_that_mean_nothing() -> None:
    """The inputs carry kubernetes-style job names, never the compose ones."""
    compose_jobs = {j["job_name"] for j in
                    yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]}
    for test in unit_tests():
        for series in test["input_series"]:
            job = re.search(r'\bjob="([^"]*)"', series["series"])
            assert not job or job.group(1) not in compose_jobs, series["series"]


def test_prometheus_config_is_valid() -> None:
    run([tool("promtool", "prometheus"), "check", "config", "prometheus.yml"])


def test_alertmanager_config_is_valid_and_knows_the_alerts() -> None:
    config = yaml.safe_load((ALERTMANAGER / "alertmanager.yml").read_text())
    names = {r["alert"] for r in rules()}
    labels = {k for r in rules() for k in r["labels"]}
    exprs = " ".join(r["expr"] for r in rules())
    for label in config["route"]["group_by"]:
        assert label == "alertname" or label in labels or label in exprs, label
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            key, _, value = re.split(r'(=~|!=|=)', matcher, maxsplit=1)
            if key == "alertname":
                pattern = value.strip('"')
                assert any(re.fullmatch(pattern, n) for n in names), matcher
    assert {r["name"] for r in config["receivers"]} >= {config["route"]["receiver"]}
    run([tool("amtool", "prometheus-alertmanager"), "check-config", "alertmanager.yml"],
        cwd=ALERTMANAGER)


def test_compose_runs_alertmanager_for_prometheus() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    manager = services["alertmanager"]
    assert manager["image"].startswith("prom/alertmanager:")
    assert manager["profiles"] == ["monitoring"] == services["prometheus"]["profiles"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in manager["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in manager["command"]
    assert "alertmanager" in services["prometheus"]["depends_on"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (target,) = [t for a in config["alerting"]["alertmanagers"]
                 for s in a["static_configs"] for t in s["targets"]]
    assert target == "alertmanager:9093"
    assert "9093:9093" in manager["ports"]
    exporter = services["nats-exporter"]
    assert exporter["profiles"] == ["monitoring"]
    assert exporter["depends_on"]["nats"]["condition"] == "service_healthy"
