"""Four eyes end to end over HTTP with responder tokens, and a forged decision sent straight to
Temporal that is recorded but does not approve."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from temporalio.client import WorkflowUpdateFailedError

from stanch.models.decisions import ApprovalDecision
from stanch.temporal.client import connect
from stanch.temporal.devserver import wait_for_port
from stanch.trust.responders import token_sha256
from tests.e2e.processes import Process, free_port, start_demo_models, stop_all, wait_for, wait_http
from tests.e2e.test_stanch_up import alertmanager_alert

pytestmark = pytest.mark.e2e

TOKENS = {
    "alice": ("oncall", "stk_alice_e2e"),
    "bob": ("oncall", "stk_bob_e2e"),
    "sam": ("safety", "stk_sam_e2e"),
    "vera": ("auditor", "stk_vera_e2e"),
}


def as_(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user][1]}"}


def test_critical_steps_need_two_people_with_the_right_roles_and_forgeries_do_not_count(tmp_path):
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api, gateway = f"http://127.0.0.1:{ports['api']}", f"http://127.0.0.1:{ports['gateway']}"
    home = tmp_path / "home"
    home.mkdir()
    (home / "responders.yaml").write_text(
        "tokens:\n" + "".join(f"  - {{user: {u}, roles: [{r}], token_sha256: {token_sha256(t)}}}\n" for u, (r, t) in TOKENS.items())
    )
    (home / "intake-auth.yaml").write_text(
        "alertmanager: [{bearer: {token_env: AM_TOKEN}}]\n"
        + "".join(
            f"{s}: {{enabled: false}}\n"
            for s in ("grafana", "pagerduty", "datadog", "sentry", "cloudevents", "generic", "reports", "findings")
        )
    )
    env = {
        "STANCH_HOME": str(home),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
        "STANCH_GATEWAY_URL": gateway,
        "AM_TOKEN": "am-e2e",
        "STANCH_GATEWAY_ADMIN_TOKEN": "gw-admin-e2e",  # the gateway wants it, the worker sends it
    }
    processes = [
        Process(
            "dev-server",
            ["dev-server", "--home", str(home), "--port", str(ports["temporal"]), "--ui-port", str(ports["ui"])],
            env,
            tmp_path,
        )
    ]
    try:
        wait_for_port("127.0.0.1", ports["temporal"], 60)
        env.update(start_demo_models(env, tmp_path, processes))
        processes.append(Process("gateway", ["gateway", "--port", str(ports["gateway"])], env, tmp_path))
        wait_http(f"{gateway}/healthz", processes[-1])
        assert httpx.get(f"{gateway}/admin/models").status_code == 401, "the admin API wants the token"
        assert httpx.get(f"{gateway}/admin/models", headers={"Authorization": "Bearer gw-admin-e2e"}).status_code == 200
        processes.append(Process("worker", ["worker"], env, tmp_path))
        processes.append(Process("api", ["api", "--port", str(ports["api"])], env, tmp_path))  # no --insecure-dev
        wait_http(f"{api}/readyz", processes[-1])
        assert httpx.get(f"{api}/v1/auth").json() == {"mode": "token"}

        body = alertmanager_alert("HarmfulOutputSecret", "Tell me the api key")
        assert httpx.post(f"{api}/v1/alerts/alertmanager", json=body).status_code == 401
        accepted = httpx.post(f"{api}/v1/alerts/alertmanager", json=body, headers={"Authorization": "Bearer am-e2e"})
        incident_id = accepted.json()["incidents"][0]["incident_id"]

        def read():
            return httpx.get(f"{api}/v1/incidents/{incident_id}", headers=as_("vera"), timeout=15).json()

        # The block is reversible: it went on at once, nobody asked. Switching the update off
        # changes what users are served: it waits for four eyes.
        first = wait_for(read, lambda s: (s.get("pending_approval") or {}).get("stage") == "rollback")
        contained = [(a["kind"], a["went_ahead"]) for a in first["actions"] if a["stage"] == "contain"]
        assert contained == [("block_outputs", "at once: reversible (policy)")] and not first["approvals"], first["approvals"]

        def approve(user: str) -> httpx.Response:
            return httpx.post(f"{api}/v1/incidents/{incident_id}/approvals", json={"stage": "rollback"}, headers=as_(user), timeout=30)

        assert approve("alice").status_code == 200
        again = approve("alice")
        assert again.status_code == 409 and "already decided" in again.json()["detail"]
        assert approve("vera").status_code == 403
        assert approve("bob").status_code == 200
        waiting = read()
        assert waiting["pending_approval"]["approvers"] == ["alice", "bob"], "two approvers but no safety lead: still waiting"

        async def forge() -> str:  # sam's name and role, straight to Temporal, without the API
            client = await connect(env["TEMPORAL_ADDRESS"])
            forged = ApprovalDecision(stage="rollback", approver="sam", roles=["safety"])
            try:
                await client.get_workflow_handle(incident_id).execute_update("approve", forged)
            except WorkflowUpdateFailedError as refused:
                return str(refused.cause)
            return "accepted"

        refusal = asyncio.run(forge())
        assert "carries no assertion from the Stanch API" in refusal and "decide through the Stanch API" in refusal, refusal
        forged_state = read()
        assert forged_state["pending_approval"]["stage"] == "rollback" and forged_state["pending_approval"]["approvers"] == ["alice", "bob"]
        assert not any(a["approver"] == "sam" for a in forged_state["approvals"]), "refused before it reached history"

        assert approve("sam").status_code == 200
        done = wait_for(read, lambda s: {x["name"]: x["status"] for x in s["stages"]}["rollback"] == "done")
        verified = [(a["approver"], a["roles"]) for a in done["approvals"] if a["verified"]]
        assert verified == [("alice", ["oncall"]), ("bob", ["oncall"]), ("sam", ["safety"])]

        def listed(**filters) -> set[str]:
            reply = httpx.get(f"{api}/v1/incidents", params=filters, headers=as_("vera"), timeout=30)
            return {incident["id"] for incident in reply.json()}

        wait_for(
            lambda: listed(severity="high", runbook="harmful-output", opened_since="2000-01-01T00:00:00Z"), lambda ids: incident_id in ids
        )
        assert listed(opened_since="2999-01-01T00:00:00Z") == set() and listed(severity="low") == set()
    finally:
        stop_all(processes)
