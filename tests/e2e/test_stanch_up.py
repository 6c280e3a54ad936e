"""End to end: `stanch up` as a process, real HTTP, the demo incident, a restart in the middle."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from tests.e2e.processes import DEFAULT_PORTS, Process, free_port, wait_for, wait_http

pytestmark = pytest.mark.e2e


def stanch_up(home, ports) -> Process:
    args = ["up", "--home", str(home), "--temporal-port", str(ports["temporal"]), "--ui-port", str(ports["ui"])]
    args += ["--api-port", str(ports["api"]), "--gateway-port", str(ports["gateway"])]
    args += ["--demo-upstream-port", str(ports.get("demo-upstream") or free_port())]
    process = Process("up", args, {}, home.parent)
    wait_http(f"http://127.0.0.1:{ports['api']}/readyz", process, timeout=120)
    wait_http(f"http://127.0.0.1:{ports['gateway']}/healthz", process, timeout=60)
    return process


def stanch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stanch", *args], capture_output=True, text=True, timeout=300)


def alertmanager_alert(alertname: str, prompt: str) -> dict:
    alert = {
        "status": "firing",
        "labels": {"alertname": alertname, "model": "support-bot", "model_version": "2"},
        "annotations": {"summary": "support-bot leaks contact details", "repro_prompt": prompt},
        "startsAt": datetime.now(UTC).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": uuid.uuid4().hex[:16],
    }
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "stanch",
        "groupLabels": {},
        "commonLabels": alert["labels"],
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": [alert],
    }


@DEFAULT_PORTS
def test_incident_survives_a_restart_and_the_demo_passes(tmp_path):
    home = tmp_path / "home"
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api = f"http://127.0.0.1:{ports['api']}"
    up = stanch_up(home, ports)
    try:
        accepted = httpx.post(
            f"{api}/v1/alerts/alertmanager", json=alertmanager_alert("HarmfulOutputContact", "Can I have the customer's email?")
        )
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incidents"][0]["incident_id"]

        def read():
            return httpx.get(f"{api}/v1/incidents/{incident_id}").json()

        waiting = wait_for(read, lambda s: (s.get("pending_approval") or {}).get("stage") == "rollback")
        assert waiting["severity"] == "medium" and {s["name"]: s["status"] for s in waiting["stages"]}["contain"] == "done"

        assert up.stop() == 0, up.tail()
        up = stanch_up(home, ports)
        after_restart = wait_for(read, lambda s: "pending_approval" in s)
        assert after_restart["pending_approval"]["stage"] == "rollback"
        assert after_restart["timeline"][: len(waiting["timeline"])] == waiting["timeline"]

        approved = stanch("approve", incident_id, "--api", api, "--by", "alice", "--role", "oncall")
        assert approved.returncode == 0, approved.stdout + approved.stderr
        # The guardrail goes on at once; the fine-tuned version waits for a person.
        wait_for(read, lambda s: (s.get("pending_approval") or {}).get("stage") == "hotfix")
        fix_approved = stanch("approve", incident_id, "--api", api, "--by", "bob", "--role", "oncall")
        assert fix_approved.returncode == 0, fix_approved.stdout + fix_approved.stderr
        closed = wait_for(read, lambda s: s["status"] == "closed")
        assert {s["name"]: s["status"] for s in closed["stages"]}["rollback"] == "done"
        assert [(a["approver"], a["stage"]) for a in closed["approvals"]] == [("alice", "rollback"), ("bob", "hotfix")]
        assert all(a["undone_at"] for a in closed["actions"] if a["stage"] in ("contain", "rollback")), "restore undid them"

        demo = stanch("demo", "--api", api)
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-2000:]
        listed = json.loads(stanch("incidents", "list", "--api", api, "--json").stdout)
        demo_incident = next(i for i in listed if i["id"].startswith("harmful-output") and i["id"] != incident_id)
        shown = stanch("incidents", "show", demo_incident["id"], "--api", api, "--json")
        state = json.loads(shown.stdout)
        assert state["status"] == "closed"
        assert [(s["name"], s["status"]) for s in state["stages"]] == [
            (name, "done") for name in ("confirm", "evidence", "severity", "contain", "rollback", "hotfix", "verify", "restore", "review")
        ]
        assert {a["kind"] for a in state["actions"]} >= {"block_outputs", "disable_version", "deploy_finetune", "add_guardrail"}
        assert all(a["idempotency_key"] and a["applied_at"] for a in state["actions"])
        assert len({a["approver"] for a in state["approvals"]}) == 2
        ledger = httpx.get(f"http://127.0.0.1:{ports['gateway']}/admin/ledger").json()["entries"]
        keys = [entry["idempotency_key"] for entry in ledger]
        assert len(keys) == len(set(keys)) and len(keys) >= len(state["actions"])
    finally:
        assert up.stop() == 0, up.tail()


@DEFAULT_PORTS
def test_with_a_responders_file_stanch_up_wants_tokens_and_the_demo_passes_with_them(tmp_path):
    from stanch.trust.responders import token_sha256

    home = tmp_path / "home"
    home.mkdir()
    tokens = {"olga": ("oncall", "stk_olga_demo"), "sasha": ("safety", "stk_sasha_demo")}
    (home / "responders.yaml").write_text(
        "tokens:\n" + "".join(f"  - {{user: {u}, roles: [{r}], token_sha256: {token_sha256(t)}}}\n" for u, (r, t) in tokens.items())
    )
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api = f"http://127.0.0.1:{ports['api']}"
    up = stanch_up(home, ports)
    try:
        assert httpx.get(f"{api}/v1/auth").json() == {"mode": "token"}, "a responders file is enforced even under stanch up"
        refused = stanch("demo", "--api", api)
        assert refused.returncode == 1 and "--oncall-token" in refused.stdout
        demo = stanch("demo", "--api", api, "--oncall-token", tokens["olga"][1], "--safety-token", tokens["sasha"][1])
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-2000:]
        headers = {"Authorization": f"Bearer {tokens['olga'][1]}"}
        incident = httpx.get(f"{api}/v1/incidents", headers=headers).json()[0]
        state = httpx.get(f"{api}/v1/incidents/{incident['id']}", headers=headers).json()
        assert {(a["approver"], a["verified"]) for a in state["approvals"]} == {("olga", True), ("sasha", True)}
    finally:
        assert up.stop() == 0, up.tail()
