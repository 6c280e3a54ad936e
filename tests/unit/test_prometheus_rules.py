"""The shipped Prometheus rules, Prometheus example and Alertmanager route load in the real tools
(Debian's `prometheus` and `prometheus-alertmanager`), and they say what the closed loop needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = sorted((DEPLOY / "rules").glob("*.yml"))


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, (
        f"{name} is not installed: .ci/run installs Debian's prometheus and prometheus-alertmanager "
        f"(apt-get install prometheus prometheus-alertmanager), which bring promtool and amtool"
    )
    return found


def check(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"


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
