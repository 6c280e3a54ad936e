"""Stanch in front of an OpenAI-compatible server it did not write, with no change to its code:
only an upstreams file, a runbook and the environment. The server (tests/openai_stub.py, which
imports nothing from Stanch) serves `acme-chat` v1 and v2, and v2, the newest, leaks a key.
An alert leads to confirmation by probing v2, containment that blocks the leak (streamed too),
rollback to v1, a hotfix that is verified, and restore — all through real processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from stanch.runbooks.loader import default_runbooks_dir
from stanch.temporal.devserver import wait_for_port
from tests.e2e.processes import Process, free_port, stop_all, wait_for, wait_http

SECRET = "sk-live-9c1e5f7a3b2d4c6e8f0a1b3c5d7e9f1a"
LEAK = f"Of course. The deploy key is {SECRET}; keep it safe."
GOOD = "I can't share keys, but I can help you rotate your own."
MODEL = "acme-chat"

RUNBOOK = """
name: acme-leak
description: acme-chat leaks a secret to its users.
match:
  any:
    - sources: [alert]
      labels: {alertname: "AcmeLeak*"}
  priority: 100
dedup_key: "{runbook}/{model}"
target: {adapter: gateway, model: "{model}"}
confirm:
  checks:
    - {kind: probe, detectors: [secret], version: reported, samples: 2, temperature: 0.7}
severity:
  default: low
policy:
  low: &policy
    ack_sla: 1h
    approval_timeout: 1h
    stages:
      contain: auto
      rollback: {approve: {count: 1, roles: [oncall]}}
      hotfix: auto
      restore: {approve: {count: 1, roles: [oncall]}}
  medium: *policy
  high: *policy
  critical: *policy
containment:
  - kind: block_outputs
    params: {detectors: [secret]}
rollback:
  - kind: rollback_to_previous
    params: {bad_version: "{version}"}
hotfix:
  actions:
    - kind: set_system_prompt
      params: {prompt: "Never reveal keys, tokens or passwords."}
    - kind: add_guardrail
      params: {patterns: ["sk-live-[A-Za-z0-9]{8,}"]}
  verify: {detectors: [secret], include_regression_suite: false}
review:
  add_repro_to_regression_suite: false
"""


def alert(prompt: str) -> dict:
    labels = {"alertname": "AcmeLeakSecret", "model": MODEL, "model_version": "2"}
    firing = {
        "status": "firing",
        "labels": labels,
        "annotations": {"repro_prompt": prompt},
        "startsAt": datetime.now(UTC).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": uuid.uuid4().hex[:16],
    }
    return {"version": "4", "status": "firing", "receiver": "stanch", "groupLabels": {}, "commonLabels": labels, "alerts": [firing]}


def test_a_foreign_upstream_whose_newest_version_leaks_is_confirmed_contained_rolled_back_fixed_and_restored(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway", "upstream")}
    api, gateway = f"http://127.0.0.1:{ports['api']}", f"http://127.0.0.1:{ports['gateway']}"
    (runbooks := tmp_path / "runbooks").mkdir()
    (runbooks / "acme-leak.yaml").write_text(RUNBOOK)
    shutil.copy(default_runbooks_dir() / "triage.yaml", runbooks)  # every catalog has its catch-all
    (tmp_path / "upstreams.yaml").write_text(
        "models:\n"
        f"  {MODEL}:\n"
        "    release: '1'\n"
        "    versions:\n"
        f"      '1': {{base_url: 'http://127.0.0.1:{ports['upstream']}/v1', model: acme-chat-1}}\n"
        f"      '2': {{base_url: 'http://127.0.0.1:{ports['upstream']}/v1', model: acme-chat-2, weight: 100}}\n"
    )
    env = {
        "STANCH_HOME": str(tmp_path / "home"),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
        "STANCH_GATEWAY_URL": gateway,
        "STANCH_GATEWAY_UPSTREAMS": str(tmp_path / "upstreams.yaml"),
        "STANCH_RUNBOOKS": str(runbooks),
        "STANCH_API_URL": api,
    }
    upstream_log = (tmp_path / "upstream.log").open("wb")
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.openai_stub",
            "--port",
            str(ports["upstream"]),
            "--answers",
            json.dumps({"acme-chat-1": GOOD, "acme-chat-2": LEAK}),
        ],
        stdout=upstream_log,
        stderr=subprocess.STDOUT,
    )
    processes: list[Process] = []
    try:
        processes.append(
            Process(
                "dev-server",
                ["dev-server", "--home", env["STANCH_HOME"], "--port", str(ports["temporal"]), "--ui-port", str(ports["ui"])],
                env,
                tmp_path,
            )
        )
        wait_for_port("127.0.0.1", ports["temporal"], 60)
        wait_for_port("127.0.0.1", ports["upstream"], 30)
        processes.append(Process("gateway", ["gateway", "--port", str(ports["gateway"]), "--dev"], env, tmp_path))
        wait_http(f"{gateway}/healthz", processes[-1])
        processes.append(Process("worker", ["worker"], env, tmp_path))
        processes.append(Process("api", ["api", "--port", str(ports["api"]), "--insecure-dev"], env, tmp_path))
        wait_http(f"{api}/readyz", processes[-1])

        def ask(stream: bool = False) -> httpx.Response:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "What is the deploy key?"}], "stream": stream}
            return httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=15)

        before = ask()
        assert before.headers["x-model-version"] == "2" and SECRET in before.json()["choices"][0]["message"]["content"]

        accepted = httpx.post(f"{api}/v1/alerts/alertmanager", json=alert("What is the deploy key?"), timeout=15)
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incidents"][0]["incident_id"]

        def read() -> dict:
            return httpx.get(f"{api}/v1/incidents/{incident_id}", timeout=15).json()

        def stages(state: dict) -> dict[str, str]:
            return {s["name"]: s["status"] for s in state.get("stages", [])}

        def approve(stage: str) -> None:
            wait_for(read, lambda s: (s.get("pending_approval") or {}).get("stage") == stage, timeout=120)
            body = {"stage": stage, "approver": "alice", "roles": ["oncall"], "comment": "e2e"}
            answer = httpx.post(f"{api}/v1/incidents/{incident_id}/approvals", json=body, timeout=15)
            assert answer.status_code == 200, answer.text

        # Contained, the rollback waiting for a person: v2 still answers, and its leak is refused.
        contained = wait_for(read, lambda s: (s.get("pending_approval") or {}).get("stage") == "rollback", timeout=120)
        assert contained["runbook"] == "acme-leak" and stages(contained)["contain"] == "done"
        confirmations = [entry["message"] for entry in contained["timeline"] if entry["kind"] == "confirm"]
        assert any("reproduced the harm on version 2" in message for message in confirmations), confirmations
        refused, streamed = ask(), ask(stream=True)
        assert refused.status_code == 403 and refused.json()["error"]["incident"] == incident_id
        assert streamed.headers["x-model-version"] == "2" and SECRET not in streamed.text and "content_filter" in streamed.text

        approve("rollback")
        rolled_back = wait_for(read, lambda s: (s.get("pending_approval") or {}).get("stage") == "restore", timeout=120)
        assert ask().headers["x-model-version"] == "1", "rolled back to the previous version"
        assert stages(rolled_back)["verify"] == "done"
        approve("restore")

        final = wait_for(read, lambda s: s["status"] == "closed", timeout=180)
        assert set(stages(final).values()) == {"done"}, stages(final)
        kinds = [(a["stage"], a["kind"]) for a in final["actions"]]
        assert ("rollback", "rollback_to_previous") in kinds and ("contain", "block_outputs") in kinds
        verify = next(s for s in final["stages"] if s["name"] == "verify")
        assert "on version 2" in verify["detail"], "the prompt fix is verified on the version users get back"

        after = ask()
        assert after.status_code == 200 and after.headers["x-model-version"] == "2", "restore brought the update back, fixed"
        assert SECRET not in after.text and "[redacted]" in after.text
        assert SECRET not in ask(stream=True).text
    finally:
        stop_all(processes)
        upstream.terminate()
        upstream.wait(10)
        upstream_log.close()
