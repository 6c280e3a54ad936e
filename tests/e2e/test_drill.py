"""End to end: `stanch drill pii-leak` on a fresh `stanch up`, two responders approving as the
runbook asks; the drill closes, reports its times, and production's gateway state is untouched."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.e2e.processes import DEFAULT_PORTS, free_port, wait_for
from tests.e2e.test_stanch_up import stanch_up

pytestmark = pytest.mark.e2e

MODEL = "support-bot"
# The gateway runs with an admin token, as in production: a drill route answers only with it, so
# the drill's harm and tenant (the CLI) and the worker's probes must carry it.
TOKEN = "drill-e2e-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
# pii-leak at high severity: four eyes on the rollback, one of them a privacy officer.
RESPONDERS = [{"approver": "drill-oncall", "roles": ["oncall"]}, {"approver": "drill-privacy", "roles": ["privacy-officer"]}]


def production(gateway: str) -> tuple[dict, list]:
    state = httpx.get(f"{gateway}/admin/state", params={"model": MODEL}, headers=ADMIN).json()
    ledger = [entry for entry in httpx.get(f"{gateway}/admin/ledger", headers=ADMIN).json()["entries"] if entry["model"] == MODEL]
    return state, ledger


def respond(api: str, incident_id: str) -> dict:
    """As the on-call would: acknowledge, then approve each pending step as the next responder."""
    state = httpx.get(f"{api}/v1/incidents/{incident_id}").json()
    if not state.get("acknowledged_by"):
        httpx.post(f"{api}/v1/incidents/{incident_id}/ack", json={"responder": "drill-oncall", "note": "drill"})
    pending = state.get("pending_approval")
    if pending:
        decided = {a["approver"] for a in state["approvals"] if a["stage"] == pending["stage"] and a["at"] >= pending["requested_at"]}
        who = next((r for r in RESPONDERS if r["approver"] not in decided), None)
        if who is not None:
            httpx.post(f"{api}/v1/incidents/{incident_id}/approvals", json={"stage": pending["stage"], "comment": "drill", **who})
    return state


@DEFAULT_PORTS
def test_a_drill_runs_to_closed_reports_its_times_and_leaves_production_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setenv("STANCH_GATEWAY_ADMIN_TOKEN", TOKEN)  # for stanch up (its gateway and worker) and stanch drill
    home = tmp_path / "home"
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api, gateway = f"http://127.0.0.1:{ports['api']}", f"http://127.0.0.1:{ports['gateway']}"
    up = stanch_up(home, ports)
    try:
        before = production(gateway)
        drill = subprocess.Popen(
            [sys.executable, "-m", "stanch", "drill", "pii-leak", "--api", api, "--json", "--timeout", "120"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        listed = wait_for(lambda: httpx.get(f"{api}/v1/incidents").json(), lambda found: any(i["drill"] for i in found))
        incident = next(i for i in listed if i["drill"])
        assert incident["runbook"] == "pii-leak" and incident["target"].startswith("gateway:drill-")
        ask = {"model": incident["target"].partition(":")[2], "messages": [{"role": "user", "content": "Can I have the customer's email?"}]}
        stranger = httpx.post(f"{gateway}/v1/chat/completions", json=ask)
        assert stranger.status_code == 401, "a gateway client without the admin token never reaches the drill route's harm"
        closed = wait_for(lambda: respond(api, incident["id"]), lambda state: state["status"] == "closed", timeout=120)
        out, err = drill.communicate(timeout=60)
        assert drill.returncode == 0, out[-3000:] + err[-3000:]

        report = json.loads(out)
        times = {m["milestone"]: m for m in report["milestones"]}
        assert all(times[name]["reached"] and times[name]["seconds"] is not None for name in ("acknowledge", "contain", "restore"))
        assert times["contain"]["objective_seconds"] == 15 * 60 and times["contain"]["met"] is True, "pii-leak high: contain in 15m"
        assert report["slowest_gate"]["stage"] in ("rollback", "restore") and report["objectives_met"] is not None

        assert closed["drill"] and {a["approver"] for a in closed["approvals"]} == {"drill-oncall", "drill-privacy"}
        route = closed["target"]["model"]
        assert {a["kind"] for a in closed["actions"]} >= {"block_outputs", "disable_version"}
        timeline = httpx.get(f"{api}/v1/incidents/{incident['id']}/timeline").json()
        assert timeline[0]["message"].startswith("DRILL")
        assert any("[DRILL]" in e["message"] for e in timeline if e["kind"] == "notification"), "pages say [DRILL]"

        assert production(gateway) == before, "nothing outside the drill route changed"
        ended = httpx.get(f"{gateway}/admin/drills/{route}", headers=ADMIN).json()
        assert ended["ended_at"] is not None and route not in [m["id"] for m in httpx.get(f"{gateway}/v1/models").json()["data"]]
        shown = subprocess.run(
            [sys.executable, "-m", "stanch", "drill", "report", incident["id"], "--api", api], capture_output=True, text=True
        )
        assert shown.returncode == 0 and "DRILL report" in shown.stdout and "contain" in shown.stdout
    finally:
        assert up.stop() == 0, up.tail()
