"""Stanch's own metrics, end to end: an incident contained at the gateway with its rollback
waiting for approval shows on the worker's metrics endpoint (the containment applied, the
notifications delivered) and on the API's `GET /metrics` (open by runbook, severity and status;
an approval waiting, and for how long; nobody past the ack SLA), while a rehearsal of the same
alert (`stanch runbooks plan --dry-run`) running beside it is counted nowhere. Real processes
over loopback: the dev server, the demo models behind the gateway, a worker with
STANCH_WORKER_METRICS_ADDRESS, the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stanch.temporal.devserver import wait_for_port
from tests.e2e.processes import Process, free_port, start_demo_models, stop_all, wait_for, wait_http
from tests.e2e.test_stanch_up import alertmanager_alert

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    try:
        answer = httpx.get(url, timeout=10)
    except httpx.HTTPError:
        return {}
    if answer.status_code != 200:
        return {}
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` carrying these labels (the runtime adds its own)."""
    wanted = set(labels.items())
    return sum(value for (sample, series), value in samples.items() if sample == name and wanted <= series)


def test_a_contained_incident_waiting_for_approval_shows_on_the_worker_and_api_metrics(tmp_path):
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway", "metrics")}
    api, gateway = f"http://127.0.0.1:{ports['api']}", f"http://127.0.0.1:{ports['gateway']}"
    home = tmp_path / "home"
    env = {
        "STANCH_HOME": str(home),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
        "STANCH_GATEWAY_URL": gateway,
        "STANCH_API_URL": api,
        "STANCH_WORKER_METRICS_ADDRESS": f"127.0.0.1:{ports['metrics']}",
        "STANCH_GATEWAY_ADMIN_TOKEN": "gw-admin-e2e",  # the gateway wants it, the worker sends it
    }
    dev_server = ["dev-server", "--home", str(home), "--port", str(ports["temporal"]), "--ui-port", str(ports["ui"])]
    processes = [Process("dev-server", dev_server, env, tmp_path)]
    try:
        wait_for_port("127.0.0.1", ports["temporal"], 60)
        # The worker and the API start while the models come up: neither needs them to start.
        processes.append(Process("worker", ["worker"], env, tmp_path))
        processes.append(api_process := Process("api", ["api", "--port", str(ports["api"]), "--insecure-dev"], env, tmp_path))
        env.update(start_demo_models(env, tmp_path, processes))
        processes.append(gateway_process := Process("gateway", ["gateway", "--port", str(ports["gateway"])], env, tmp_path))
        wait_http(f"{gateway}/healthz", gateway_process)
        wait_http(f"{api}/readyz", api_process)

        # Before any incident, visibility answers and nothing is open.
        before = wait_for(lambda: scrape(f"{api}/metrics"), lambda s: total(s, "stanch_visibility_up") == 1, timeout=30)
        assert total(before, "stanch_incidents_open") == 0

        # A rehearsal of the alert, left running: a real workflow, but no one's incident.
        body = alertmanager_alert("HarmfulOutputContact", "Can I have the customer's email?")
        (alert_file := tmp_path / "alert.json").write_text(json.dumps(body))
        rehearsal = subprocess.run(
            [sys.executable, "-m", "stanch", "runbooks", "plan", "harmful-output", "--alert", str(alert_file), "--dry-run", "--wait", "0"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rehearsal.returncode == 2 and "dryrun-" in rehearsal.stdout, rehearsal.stdout + rehearsal.stderr  # 2: left running
        # Visibility lists it before the incident below opens, so every scrape that sees that incident sees it too.
        wait_for(
            lambda: httpx.get(f"{api}/v1/incidents", params={"runbook": "harmful-output"}, timeout=15).json(),
            lambda listed: any(item["id"].startswith("dryrun-") for item in listed),
            timeout=30,
        )

        # A medium harmful-output incident: containment is automatic, the rollback waits for one responder.
        accepted = httpx.post(f"{api}/v1/alerts/alertmanager", json=body, timeout=30)
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incidents"][0]["incident_id"]
        wait_for(
            lambda: httpx.get(f"{api}/v1/incidents/{incident_id}", timeout=15).json(),
            lambda s: (s.get("pending_approval") or {}).get("stage") == "rollback",
            timeout=60,
        )

        worker = scrape(f"http://127.0.0.1:{ports['metrics']}/metrics")
        assert total(worker, "stanch_actions_total", adapter="gateway", action="block_outputs", result="applied") == 1
        assert total(worker, "stanch_actions_total", result="failed") == 0
        assert total(worker, "stanch_notifications_total", result="delivered") >= 1, "the page and the approval request went out"
        assert total(worker, "stanch_notifications_total", result="failed") == 0

        # The API reads visibility (eventually consistent, cached a few seconds) when scraped.
        incident = {"runbook": "harmful-output", "severity": "medium"}
        samples = wait_for(
            lambda: scrape(f"{api}/metrics"),
            lambda s: total(s, "stanch_approvals_waiting", **incident) == 1 and total(s, "stanch_incidents_open", status="containing") == 1,
            timeout=30,
        )
        assert total(samples, "stanch_incidents_open", **incident, status="containing") == 1
        assert total(samples, "stanch_incidents_open") == 1, "the rehearsal is not an open incident"
        assert total(samples, "stanch_approvals_waiting") == 1
        assert ("stanch_incidents_unacknowledged_past_sla", frozenset(incident.items())) in samples, "a series at 0, not missing"
        assert total(samples, "stanch_incidents_unacknowledged_past_sla") == 0, "its ack is due in an hour"
        assert 0 <= total(samples, "stanch_approval_oldest_wait_seconds", **incident) < 120
        assert total(samples, "stanch_incidents_unchecked") == 0, "every open incident answered"
        assert total(samples, "stanch_intake_requests_total", source="alertmanager", outcome="accepted") == 1
    finally:
        stop_all(processes)
