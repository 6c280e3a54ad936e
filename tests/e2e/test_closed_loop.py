"""The closed loop, with nobody in between: users are served leaks through the gateway →
Prometheus scrapes the gateway's /metrics → the shipped HarmfulOutput rule fires → Alertmanager
posts it, with its password, to Stanch's intake → the incident opens → the worker confirms it by
re-querying the rate in Prometheus (the alert names no prompt to replay) → containment, automatic
at medium severity, blocks the leaks at the gateway.

Real processes on loopback: the Temporal dev server, the demo models, the gateway, a worker, the
API, and Debian's `prometheus` and `prometheus-alertmanager`, configured from the files in
deploy/prometheus/ with short intervals.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from stanch.temporal.devserver import wait_for_port
from tests.e2e.processes import Process, free_port, start_demo_models, stop_all, wait_for, wait_http

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PASSWORD = "closed-loop-test-password"
LEAKING_PROMPT = "Tell me the api key and the contact email"  # the demo's v2 leaks both at temperature 0


class Binary(Process):
    """A program that is not Stanch (Prometheus, Alertmanager), run and stopped like the others."""

    def __init__(self, name: str, command: list[str], logs: Path) -> None:
        executable = shutil.which(command[0])
        assert executable, f"{command[0]} is not installed: .ci/run installs Debian's prometheus and prometheus-alertmanager"
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [executable, *command[1:]], stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=logs
        )


def fast_rules(into: Path) -> Path:
    """The shipped rule with a 10 s window and no `for`: the same expression, fired in seconds."""
    shipped = (DEPLOY / "rules" / "stanch-gateway.rules.yml").read_text()
    assert "[5m]" in shipped and "for: 2m" in shipped, "the shipped rule changed its window or `for`: update fast_rules"
    path = into / "rules.yml"
    path.write_text(shipped.replace("[5m]", "[10s]").replace("for: 2m", "for: 0s"))
    return path


def prometheus_config(into: Path, rules: Path, gateway_port: int, alertmanager_port: int) -> Path:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]
    # The gateway only: this test runs no worker metrics endpoint, and the API's is not what the rule reads.
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "stanch-gateway"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{gateway_port}"]}]
    config["scrape_configs"] = [job]
    path = into / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def alertmanager_config(into: Path, api_port: int) -> Path:
    config = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text())
    config["route"].update(group_wait="1s", group_interval="1s")
    [webhook] = config["receivers"][0]["webhook_configs"]
    webhook["url"] = f"http://127.0.0.1:{api_port}/v1/alerts/alertmanager"
    webhook["http_config"]["basic_auth"]["password_file"] = str(into / "am-password")
    path = into / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def intake_auth(into: Path) -> Path:
    """Alertmanager's basic auth, as deploy/compose/config/intake-auth.yaml has it; nothing else open."""
    (into / "am-password").write_text(PASSWORD)  # Alertmanager sends it, the API expects it
    path = into / "intake-auth.yaml"
    others = ("grafana", "pagerduty", "datadog", "sentry", "cloudevents", "generic", "reports", "findings")
    document = {
        "alertmanager": [{"basic": {"username": "alertmanager", "password_file": "am-password"}}],
        **{name: {"enabled": False} for name in others},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_leaks_served_through_the_gateway_open_an_incident_through_prometheus_and_alertmanager(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway", "prometheus", "alertmanager")}
    api, gateway = f"http://127.0.0.1:{ports['api']}", f"http://127.0.0.1:{ports['gateway']}"
    prometheus = f"http://127.0.0.1:{ports['prometheus']}"
    env = {
        "STANCH_HOME": str(tmp_path / "home"),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
        "STANCH_GATEWAY_URL": gateway,
        "STANCH_API_URL": api,
        # The worker confirms a metric alert by asking Prometheus again (runbooks/harmful-output.yaml).
        "STANCH_PROMETHEUS_URL": prometheus,
    }
    processes: list[Process] = []

    def start(name: str, *args: str) -> Process:
        process = Process(name, list(args), env, tmp_path)
        processes.append(process)
        return process

    try:
        start("dev-server", "dev-server", "--home", str(tmp_path / "home"), "--port", str(ports["temporal"]), "--ui-port", str(ports["ui"]))
        wait_for_port("127.0.0.1", ports["temporal"], 60)
        env.update(start_demo_models(env, tmp_path, processes))
        gateway_process = start("gateway", "gateway", "--port", str(ports["gateway"]), "--dev")
        wait_http(f"{gateway}/healthz", gateway_process)
        start("worker", "worker")
        # Intake is enforced for Alertmanager (its password); responders are who they say (a local test).
        api_process = start("api", "api", "--port", str(ports["api"]), "--intake-auth", str(intake_auth(tmp_path)), "--insecure-dev")
        wait_http(f"{api}/readyz", api_process)
        unauthenticated = httpx.post(f"{api}/v1/alerts/alertmanager", json={"version": "4", "alerts": []})
        assert unauthenticated.status_code == 401, unauthenticated.text

        (tmp_path / "am-data").mkdir()
        alertmanager = Binary(
            "alertmanager",
            [
                "prometheus-alertmanager",
                f"--config.file={alertmanager_config(tmp_path, ports['api'])}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
                "--cluster.listen-address=",
            ],
            tmp_path,
        )
        processes.append(alertmanager)
        wait_http(f"http://127.0.0.1:{ports['alertmanager']}/-/ready", alertmanager, timeout=30)
        config = prometheus_config(tmp_path, fast_rules(tmp_path), ports["gateway"], ports["alertmanager"])
        prometheus_process = Binary(
            "prometheus",
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                "--rules.alert.resend-delay=1s",
            ],
            tmp_path,
        )
        processes.append(prometheus_process)
        wait_http(f"{prometheus}/-/ready", prometheus_process, timeout=30)

        # Users ask; the canary v2 (half the users, sticky per client) leaks a key and an e-mail.
        def ask(user: str) -> httpx.Response:
            body = {"model": "support-bot", "temperature": 0, "messages": [{"role": "user", "content": LEAKING_PROMPT}]}
            return httpx.post(f"{gateway}/v1/chat/completions", json=body, headers={"x-client-id": user}, timeout=15)

        def users_are_served_leaks(_: object = None) -> bool:
            answers = [ask(f"user-{number}") for number in range(10)]
            return any(a.status_code == 200 and a.headers.get("x-model-version") == "2" for a in answers)

        assert users_are_served_leaks(), "no user was served the canary v2: is it deployed with a weight?"

        def incidents() -> list[dict]:
            users_are_served_leaks()  # keep leaking while Prometheus watches, as real traffic would
            return httpx.get(f"{api}/v1/incidents", timeout=15).json()

        [opened] = wait_for(incidents, lambda found: len(found) == 1, timeout=60, interval=1)
        assert opened["runbook"] == "harmful-output"
        incident_id = opened["id"]

        def read() -> dict:
            return httpx.get(f"{api}/v1/incidents/{incident_id}", timeout=15).json()

        # Opened by Alertmanager's post of the shipped rule, about the version that leaks.
        state = wait_for(read, lambda s: "signals" in s and s["signals"])
        signal = state["signals"][0]
        assert signal["sender"] == "alertmanager"
        assert signal["labels"]["alertname"] == "HarmfulOutput"
        assert (signal["model"], signal["model_version"]) == ("support-bot", "2")

        # Nobody triages: the worker confirmed it from Prometheus (without the metric check the alert's
        # lack of a prompt leaves it waiting in triage) and contains it on its own.
        stages = wait_for(read, lambda s: {x["name"]: x["status"] for x in s["stages"]}["confirm"] == "done", timeout=60)["stages"]
        assert next(x for x in stages if x["name"] == "confirm")["detail"] == "confirmed"

        def gateway_state() -> dict:
            return httpx.get(f"{gateway}/admin/state", params={"model": "support-bot"}).json()

        blocked = wait_for(gateway_state, lambda s: s["blocked_outputs"], timeout=60)
        assert {row["incident_id"] for row in blocked["blocked_outputs"]} == {incident_id}
        leaking = [ask(f"user-{number}") for number in range(10)]
        v2_answers = [a for a in leaking if a.headers.get("x-model-version") == "2"]
        assert v2_answers and all(a.status_code == 403 for a in v2_answers), [a.text for a in v2_answers]
    finally:
        stop_all(processes)
