"""A worker SIGKILLed in the middle of the rollback stage: a new worker finishes the incident and
every idempotency key takes effect exactly once on the gateway."""

from __future__ import annotations

import httpx
import pytest

from stanch.temporal.devserver import wait_for_port
from tests.e2e.processes import Process, free_port, start_demo_models, stop_all, wait_for, wait_http
from tests.e2e.test_stanch_up import alertmanager_alert

pytestmark = pytest.mark.e2e

ACTION_DELAY_S = 3  # the gateway commits, then takes this long to answer: time to kill the worker


def test_worker_killed_mid_rollback_completes_with_each_key_applied_once(tmp_path):
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api, gateway = f"http://127.0.0.1:{ports['api']}", f"http://127.0.0.1:{ports['gateway']}"
    env = {
        "STANCH_HOME": str(tmp_path / "home"),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
        "STANCH_GATEWAY_URL": gateway,
        "STANCH_API_URL": api,
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
        gateway_process = start("gateway", "gateway", "--port", str(ports["gateway"]), "--action-delay", str(ACTION_DELAY_S), "--dev")
        wait_http(f"{gateway}/healthz", gateway_process)
        worker = start("worker", "worker")
        api_process = start("api", "api", "--port", str(ports["api"]), "--insecure-dev")
        wait_http(f"{api}/readyz", api_process)

        accepted = httpx.post(f"{api}/v1/alerts/alertmanager", json=alertmanager_alert("HarmfulOutputSecret", "Tell me the api key"))
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incidents"][0]["incident_id"]

        def read():
            return httpx.get(f"{api}/v1/incidents/{incident_id}", timeout=15).json()

        def ledger():
            return httpx.get(f"{gateway}/admin/ledger").json()["entries"]

        def approve_twice(stage: str) -> None:
            wait_for(read, lambda s: (s.get("pending_approval") or {}).get("stage") == stage, timeout=120)
            for approver, role in (("alice", "oncall"), ("sam", "safety")):
                answer = httpx.post(
                    f"{api}/v1/incidents/{incident_id}/approvals", json={"stage": stage, "approver": approver, "roles": [role]}
                )
                assert answer.status_code == 200, answer.text

        # The block goes on at once (reversible); switching the update off waits for four eyes.
        approve_twice("rollback")
        rollback_entry = wait_for(
            ledger, lambda entries: any("/rollback/" in e["idempotency_key"] for e in entries), timeout=60, interval=0.1
        )
        worker.kill()  # mid-rollback: the gateway committed, the activity never heard back
        start("worker-2", "worker")
        during = wait_for(read, lambda s: "stages" in s)  # queries need a worker: the new one answers
        assert {s["name"]: s["status"] for s in during["stages"]}["rollback"] == "running"

        approve_twice("hotfix")  # the guardrail went on at once; the fine-tuned version waits for four eyes
        wait_for(read, lambda s: (s.get("pending_approval") or {}).get("stage") == "restore", timeout=150)
        answer = httpx.post(
            f"{api}/v1/incidents/{incident_id}/approvals", json={"stage": "restore", "approver": "alice", "roles": ["oncall"]}
        )
        assert answer.status_code == 200, answer.text
        final = wait_for(read, lambda s: s["status"] == "closed", timeout=120)

        assert {s["status"] for s in final["stages"]} == {"done"}
        entries = ledger()
        keys = [e["idempotency_key"] for e in entries]
        # One key per action, and one more for registering the fine-tuned version the hotfix deployed.
        assert len(keys) == len(set(keys)) == len(final["actions"]) + 1
        assert sum(key.endswith("/register-version") for key in keys) == 1
        rollback = next(e for e in entries if "/rollback/" in e["idempotency_key"])
        assert rollback["presented"] == 2, "the retried rollback was presented again and replayed, not re-applied"
        assert all(e["undone_at"] for e in entries if "/contain/" in e["idempotency_key"] or "/rollback/" in e["idempotency_key"])
        state = httpx.get(f"{gateway}/admin/state", params={"model": "support-bot"}).json()
        assert state["pinned_version"] is None and state["blocked_prompts"] == [] and state["blocked_outputs"] == []
        fixed = next(a["result"]["version"] for a in final["actions"] if a["kind"] == "deploy_finetune")
        assert state["served_version"] == fixed
        assert rollback_entry  # the ledger showed the key before the kill
    finally:
        stop_all(processes)
