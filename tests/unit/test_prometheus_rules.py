"""The shipped Prometheus rules, Prometheus example and Alertmanager route load in the real tools
(Debian's `prometheus` and `prometheus-alertmanager`), and they say what the closed loop needs;
Stanch's own alerts fire on trouble and stay quiet when healthy (promtool's unit tests), and reach
its operators, never its own intake."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = sorted((DEPLOY / "rules").glob("*.yml"))
SELF_RULES = DEPLOY / "rules" / "stanch-self.rules.yml"


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, (
        f"{name} is not installed: .ci/run installs Debian's prometheus and prometheus-alertmanager "
        f"(apt-get install prometheus prometheus-alertmanager), which bring promtool and amtool"
    )
    return found


def check(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def alerting_rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_shipped_rules() -> None:
    assert RULES, f"no rule files in {DEPLOY / 'rules'}"
    check(tool("promtool"), "check", "rules", *map(str, RULES))


def test_promtool_accepts_the_example_prometheus_config_and_the_rules_it_loads() -> None:
    check(tool("promtool"), "check", "config", str(DEPLOY / "prometheus.yml"))


def test_amtool_accepts_the_alertmanager_route() -> None:
    check(tool("amtool"), "check-config", str(DEPLOY / "alertmanager.yml"))


def test_the_harmful_output_rule_names_what_the_runbook_and_the_intake_read() -> None:
    rules = [rule for path in RULES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
    harmful = next(rule for rule in rules if rule.get("alert") == "HarmfulOutput")
    # runbooks/harmful-output.yaml matches alertname "HarmfulOutput*"; the intake reads model and model_version.
    assert "stanch_gateway_harmful_outputs_total" in harmful["expr"]
    assert '"model_version", "$1", "version"' in harmful["expr"]
    assert "by (model, version)" in harmful["expr"]
    assert harmful["annotations"]["summary"]
    assert harmful["labels"]["severity"]


def test_alertmanager_posts_to_stanchs_intake_with_a_password_file_and_resolved_notices() -> None:
    config = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text())
    [receiver] = [r for r in config["receivers"] if r["name"] == config["route"]["receiver"]]
    [webhook] = receiver["webhook_configs"]
    assert webhook["url"].endswith("/v1/alerts/alertmanager")
    assert webhook["send_resolved"] is True
    basic = webhook["http_config"]["basic_auth"]
    assert basic["username"] == "alertmanager" and "password_file" in basic and "password" not in basic


def test_stanchs_own_alerts_fire_on_trouble_and_stay_quiet_when_healthy() -> None:
    # deploy/prometheus/tests/*.yml: synthetic series for each alert, firing and quiet cases.
    tests = sorted((DEPLOY / "tests").glob("*.yml"))
    assert tests, f"no promtool tests in {DEPLOY / 'tests'}"
    check(tool("promtool"), "test", "rules", *map(str, tests))


def test_every_stanch_alert_is_tested_and_says_what_to_do() -> None:
    tested = {
        case["alertname"]
        for path in (DEPLOY / "tests").glob("*.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    rules = alerting_rules(SELF_RULES)
    assert {
        "StanchIncidentAckSLABreached",
        "StanchApprovalWaitingTooLong",
        "StanchIncidentAwaitingPerson",
        "StanchNoWorker",
        "StanchIntakeErrors",
    } <= {rule["alert"] for rule in rules}
    for rule in rules:
        name = rule["alert"]
        assert name in tested, f"{name}: no promtool test shows it firing (deploy/prometheus/tests/)"
        assert rule["labels"]["service"] == "stanch", f"{name}: service=stanch routes it to the operators, not the intake"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"], name
        assert "What to do:" in rule["annotations"]["description"], f"{name}: the description says what to do"


def routed_to(*labels: str) -> str:
    """The receiver Alertmanager picks for an alert with these labels, as amtool resolves it."""
    output = check(tool("amtool"), "config", "routes", "test", f"--config.file={DEPLOY / 'alertmanager.yml'}", *labels)
    return output.strip()


def test_stanchs_own_alerts_go_to_its_operators_never_to_its_own_intake() -> None:
    config = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text())
    intake = config["route"]["receiver"]
    for rule in alerting_rules(SELF_RULES):
        labels = [f"alertname={rule['alert']}", *(f"{key}={value}" for key, value in rule["labels"].items())]
        assert routed_to(*labels) == "stanch-operators", rule["alert"]
    # The model's alert still reaches the intake.
    assert routed_to("alertname=HarmfulOutput", "model=support-bot", "model_version=v2", "severity=warning") == intake
    [operators] = [receiver for receiver in config["receivers"] if receiver["name"] == "stanch-operators"]
    urls = [hook["url"] for hook in operators.get("webhook_configs", [])]
    assert urls and all("REPLACE-ME" in url and "/v1/alerts/" not in url for url in urls), "a placeholder the operator fills in"


def test_prometheus_scrapes_the_jobs_the_rules_read() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"stanch-gateway", "stanch-api", "stanch-worker"}
    for rule in alerting_rules(SELF_RULES):
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']} reads job {job}, which prometheus.yml does not scrape"
