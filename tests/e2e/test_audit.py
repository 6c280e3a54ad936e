"""End to end: audit the demo incident of a real `stanch up` — replay the history the Temporal CLI
shows, read its timeline, export a bundle, verify it, and catch one flipped byte — and a dry run
on the same installation, labelled as one in replay, timeline and bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest

from stanch.runbooks.loader import default_runbooks_dir
from tests.conftest import installed_binary
from tests.e2e.processes import free_port, wait_for
from tests.e2e.test_stanch_up import stanch, stanch_up
from tests.workflow.conftest import alert

pytestmark = pytest.mark.e2e


def test_the_demo_incident_audits_end_to_end(tmp_path):
    home = tmp_path / "home"
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api, temporal = f"http://127.0.0.1:{ports['api']}", f"127.0.0.1:{ports['temporal']}"
    # The auditor's side of the same machine: the worker's home (decision keys, evidence) and Temporal.
    env = {**os.environ, "STANCH_HOME": str(home), "TEMPORAL_ADDRESS": temporal}
    env.pop("STANCH_DECISION_KEYS", None)

    def audit(*args) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "stanch", "audit", *map(str, args)], capture_output=True, text=True, timeout=120, env=env, check=False
        )

    up = stanch_up(home, ports)
    try:
        demo = stanch("demo", "--api", api)
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-2000:]
        [incident] = json.loads(stanch("incidents", "list", "--api", api, "--json").stdout)
        state = httpx.get(f"{api}/v1/incidents/{incident['id']}").json()

        shown = subprocess.run(
            [installed_binary("temporal"), "workflow", "show", "--output", "json", "-w", incident["id"], "--address", temporal],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
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

        def row_of(stage: str) -> str:
            return next(line for line in timeline.stdout.splitlines() if line.startswith(f"| {stage} | "))

        # The block went on at once (reversible): nobody approved it. The version switch and the
        # fine-tuned version waited for both responders.
        assert not any(f"{who} (" in row_of("contain") for who in approvers), row_of("contain")
        for stage in ("rollback", "hotfix"):
            assert all(f"{who} (" in row_of(stage) for who in approvers) and "unverified" not in row_of(stage), row_of(stage)
        for action in state["actions"]:
            assert f"| {action['kind']} | " in timeline.stdout and action["idempotency_key"] in timeline.stdout, action["kind"]
        assert "| restored | " in timeline.stdout and "not reached" not in timeline.stdout.split("## Signals")[0]

        # A rehearsal on the same installation. The demo fixed the model, so the probe finds nothing:
        # a miss never closes an incident by itself, the rehearsal waits for triage, and a
        # responder calls it a false positive.
        alert_path = tmp_path / "alert.json"
        alert_path.write_text(alert(signal_id="dry-audit").model_dump_json())
        rehearsal = subprocess.run(
            [
                sys.executable,
                "-m",
                "stanch",
                "runbooks",
                "plan",
                str(default_runbooks_dir() / "harmful-output.yaml"),
                "--alert",
                str(alert_path),
                "--dry-run",
                "--wait",
                "10",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert rehearsal.stdout.startswith("dry run dryrun-") and "a person decides" in rehearsal.stdout, (
            rehearsal.stdout + rehearsal.stderr
        )
        dry_run_id = rehearsal.stdout.split()[2]
        triage = {"by": "alice", "outcome": "false_positive", "reason": "the demo's fix holds: nothing to rehearse"}
        assert httpx.post(f"{api}/v1/incidents/{dry_run_id}/triage", json=triage, timeout=15).status_code == 200
        wait_for(lambda: httpx.get(f"{api}/v1/incidents/{dry_run_id}", timeout=15).json(), lambda s: s["status"] == "false_positive")
        replayed = audit("replay", "--all", "--since", today)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert f"{dry_run_id} run " in replayed.stdout and "[dry run]: reproduced" in replayed.stdout
        assert f"{incident['id']} run " in replayed.stdout and "1 of them a dry run" in replayed.stdout
        rehearsed = audit("timeline", dry_run_id, "--format", "md")
        assert rehearsed.returncode == 0, rehearsed.stderr
        assert "> **DRY RUN — a rehearsal, not an incident" in rehearsed.stdout and "| dry run | yes: a rehearsal" in rehearsed.stdout
        assert "| contained | not reached |" in rehearsed.stdout and "| closed | " in rehearsed.stdout

        bundle = tmp_path / "bundle"
        export = audit("export", "--since", today, "--out", bundle)
        assert export.returncode == 0, export.stdout + export.stderr
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert "evidence" in {entry["kind"] for entry in manifest["entries"]}
        assert manifest["left_out"] == [], "the worker's own snapshots are exported, unchanged"
        assert manifest["entry_count"] == len(manifest["entries"])
        assert [run.split(" run ")[0] for run in manifest["dry_runs"]] == [dry_run_id]
        verified = audit("verify", bundle)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "unsigned: the hash chain shows" in verified.stdout and "cannot show a consistent rewrite" in verified.stdout
        assert audit("verify", bundle, "--require-signature").returncode == 1

        evidence = next((bundle / "evidence").rglob("*.json"))
        data = bytearray(evidence.read_bytes())
        data[len(data) // 2] ^= 0x01
        evidence.write_bytes(bytes(data))
        tampered = audit("verify", bundle)
        assert tampered.returncode == 1
        assert evidence.relative_to(bundle).as_posix() in tampered.stdout and "edited" in tampered.stdout
    finally:
        assert up.stop() == 0, up.tail()
