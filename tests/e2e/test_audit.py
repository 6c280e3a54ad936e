"""End to end: audit the demo incident of a real `stanch up` — replay the history the Temporal CLI
shows, read its timeline, export a bundle, verify it, and catch one flipped byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest

from tests.conftest import installed_binary
from tests.e2e.processes import free_port
from tests.e2e.test_stanch_up import stanch, stanch_up

pytestmark = pytest.mark.e2e


def test_the_demo_incident_audits_end_to_end(tmp_path):
    home = tmp_path / "home"
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api, temporal = f"http://127.0.0.1:{ports['api']}", f"127.0.0.1:{ports['temporal']}"
    # The auditor's side of the same machine: the worker's home (decision keys, evidence) and Temporal.
    env = {**os.environ, "STANCH_HOME": str(home), "TEMPORAL_ADDRESS": temporal}
    env.pop("STANCH_DECISION_KEYS", None)

    def audit(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stanch", "audit", *map(str, args)], capture_output=True, text=True, timeout=120, env=env, check=False)

    up = stanch_up(home, ports)
    try:
        demo = stanch("demo", "--api", api)
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-2000:]
        [incident] = json.loads(stanch("incidents", "list", "--api", api, "--json").stdout)
        state = httpx.get(f"{api}/v1/incidents/{incident['id']}").json()

        shown = subprocess.run(
            [installed_binary("temporal"), "workflow", "show", "--output", "json", "-w", incident["id"], "--address", temporal],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert shown.returncode == 0, shown.stderr
        history = tmp_path / "history.json"
        history.write_text(shown.stdout)
        replay = audit("replay", "--file", history)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "reproduced" in replay.stdout
        today = datetime.now(UTC).date().isoformat()
        for selection in ([incident["id"]], ["--all", "--since", today]):
            fetched = audit("replay", *selection)  # straight from Temporal, by id and by listing
            assert fetched.returncode == 0 and incident["id"] in fetched.stdout, fetched.stdout + fetched.stderr

        timeline = audit("timeline", incident["id"], "--format", "md")
        assert timeline.returncode == 0, timeline.stderr
        approvers = {a["approver"] for a in state["approvals"]}
        assert approvers == {"demo-oncall", "demo-safety"}
        for stage in ("contain", "rollback"):
            row = next(line for line in timeline.stdout.splitlines() if line.startswith(f"| {stage} | "))
            assert all(f"{who} (" in row for who in approvers) and "unverified" not in row, row
        for action in state["actions"]:
            assert f"| {action['kind']} | " in timeline.stdout and action["idempotency_key"] in timeline.stdout, action["kind"]
        assert "| restored | " in timeline.stdout and "not reached" not in timeline.stdout.split("## Signals")[0]

        bundle = tmp_path / "bundle"
        export = audit("export", "--since", today, "--out", bundle)
        assert export.returncode == 0, export.stdout + export.stderr
        assert "evidence" in {entry["kind"] for entry in json.loads((bundle / "manifest.json").read_text())["entries"]}
        verified = audit("verify", bundle)
        assert verified.returncode == 0, verified.stdout + verified.stderr

        evidence = next((bundle / "evidence").rglob("*.json"))
        data = bytearray(evidence.read_bytes())
        data[len(data) // 2] ^= 0x01
        evidence.write_bytes(bytes(data))
        tampered = audit("verify", bundle)
        assert tampered.returncode == 1
        assert evidence.relative_to(bundle).as_posix() in tampered.stdout and "edited" in tampered.stdout
    finally:
        assert up.stop() == 0, up.tail()
