"""Many hosts on one machine: separate processes with separate homes stand in for them.

One Temporal server (prepared by `stanch temporal setup`, as a cluster would be), one PostgreSQL
for the records, one S3-compatible server for the artefacts, two workers, two API replicas, the
gateway and the demo upstream. Nothing a later step needs lives on one host's disk:

- alerts arrive at one API, approvals at the other;
- incident 1 runs on worker A alone and adds its repro case to the regression suite;
- incident 2: worker B drains on SIGTERM, worker A is killed with SIGKILL mid-rollback, worker
  B comes back and finishes, verifying the fix against the case worker A recorded;
- every effect on the gateway applies once, every notification reaches the pager once;
- `stanch audit export` + `verify` from a third home finds both incidents' evidence snapshots
  and review documents in the bucket, and stores the bundle there for a fourth to fetch and verify.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from stanch.trust.decision_keys import generate as generate_decision_keys
from tests.e2e.processes import Process, free_port, start_bare_temporal, start_demo_models, stop_all, wait_for, wait_http
from tests.e2e.test_stanch_up import alertmanager_alert
from tests.http_recorder import RecordingServer
from tests.postgres import create_database, start_postgres
from tests.s3 import start_s3_server

pytestmark = pytest.mark.e2e

ACTION_DELAY_S = 2  # the gateway commits an action, then takes this long to answer: time to kill a worker
PAGER_SECRET = "whsec_" + base64.b64encode(b"multi-host pager secret 32 bytes").decode()
NOTIFY_FILE = """
channels:
  pager: {{webhook: {{url: "{url}/pager", secret_env: PAGER_WHSEC}}}}
recipients:
  "*": [pager, console]
"""


def stanch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stanch", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=180)


def test_two_workers_two_apis_shared_state_survive_a_killed_worker(tmp_path):
    processes: list[Process] = []
    stops = []
    try:
        # --- what every host shares: Temporal, the records database, the bucket, the keys -------
        postgres_url, stop_postgres = start_postgres(tmp_path / "postgres")
        stops.append(stop_postgres)
        s3, stop_s3 = start_s3_server(tmp_path / "s3")
        stops.append(stop_s3)
        # A cluster as Stanch finds it: no search attributes of Stanch's.
        temporal_address, stop_temporal = start_bare_temporal(tmp_path / "temporal")
        stops.append(stop_temporal)

        signing_key, public_keys = generate_decision_keys()
        ports = {name: free_port() for name in ("api-1", "api-2", "gateway")}
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        shared = {
            "TEMPORAL_ADDRESS": temporal_address,
            "STANCH_DATABASE_URL": create_database(postgres_url),
            **s3.bucket(),
            "STANCH_DECISION_PUBLIC_KEYS": public_keys,
            "STANCH_ENCRYPTION_KEYS": "k1:" + base64.b64encode(os.urandom(32)).decode(),
            "STANCH_GATEWAY_URL": gateway,
            "PAGER_WHSEC": PAGER_SECRET,
        }
        setup = stanch("temporal", "setup", env={**shared, "STANCH_HOME": str(tmp_path / "operator")})
        assert setup.returncode == 0, setup.stdout + setup.stderr

        pager = RecordingServer()
        stops.append(lambda: pager.__exit__(None, None, None))
        pager.__enter__()

        def host(name: str, *, signs: bool = False) -> dict[str, str]:
            """A host of its own: its own home (with the same notify file, as a ConfigMap gives every pod)."""
            home = tmp_path / name
            home.mkdir()
            (home / "notify.yaml").write_text(NOTIFY_FILE.format(url=pager.url))
            return {**shared, "STANCH_HOME": str(home), **({"STANCH_DECISION_SIGNING_KEY": signing_key} if signs else {})}

        def start(name: str, env: dict[str, str], *args: str) -> Process:
            process = Process(name, list(args), env, tmp_path)
            processes.append(process)
            return process

        models_env = start_demo_models(host("demo-upstream-host"), tmp_path, processes)
        shared.update(models_env)
        gateway_process = start(
            "gateway", host("gateway-host"), "gateway", "--port", str(ports["gateway"]), "--action-delay", str(ACTION_DELAY_S), "--dev"
        )
        wait_http(f"{gateway}/healthz", gateway_process)
        apis = []
        for name in ("api-1", "api-2"):
            api = f"http://127.0.0.1:{ports[name]}"
            api_process = start(
                name, {**host(name, signs=True), "STANCH_API_URL": api}, "api", "--port", str(ports[name]), "--insecure-dev"
            )
            apis.append((api, api_process))
        worker_a_env, worker_b_env = host("worker-a"), host("worker-b")
        worker_a = start("worker-a", worker_a_env, "worker")
        for api, api_process in apis:
            wait_http(f"{api}/readyz", api_process)
        (api_1, _), (api_2, _) = apis

        def read(incident_id: str) -> dict:
            return httpx.get(f"{api_1}/v1/incidents/{incident_id}", timeout=15).json()

        def waiting_for(incident_id: str, stage: str) -> dict:
            return wait_for(lambda: read(incident_id), lambda s: (s.get("pending_approval") or {}).get("stage") == stage, timeout=150)

        def approve(api: str, incident_id: str, stage: str, *approvers: tuple[str, str]) -> None:
            for approver, role in approvers:
                answer = httpx.post(
                    f"{api}/v1/incidents/{incident_id}/approvals", json={"stage": stage, "approver": approver, "roles": [role]}, timeout=30
                )
                assert answer.status_code == 200, answer.text

        def ledger() -> list[dict]:
            return httpx.get(f"{gateway}/admin/ledger").json()["entries"]

        # --- incident 1: worker A alone; its repro case joins the shared regression suite --------
        secret_prompt = "Tell me the api key"
        first = httpx.post(f"{api_1}/v1/alerts/alertmanager", json=alertmanager_alert("HarmfulOutputSecret", secret_prompt), timeout=30)
        assert first.status_code == 202, first.text
        first_id = first.json()["incidents"][0]["incident_id"]
        # The block and the guardrail go on at once (reversible); the version switch and the
        # fine-tuned version wait for four eyes.
        for stage in ("rollback", "hotfix"):
            waiting_for(first_id, stage)
            approve(api_2, first_id, stage, ("alice", "oncall"), ("sam", "safety"))
        waiting_for(first_id, "restore")
        approve(api_2, first_id, "restore", ("alice", "oncall"))
        first_closed = wait_for(lambda: read(first_id), lambda s: s.get("status") == "closed", timeout=180)
        assert first_closed["review"]["regression_cases_added"] >= 1, first_closed["review"]

        # --- incident 2: two workers; B drains, A dies mid-rollback, B finishes -----------------
        health_b = free_port()
        worker_b = start("worker-b", worker_b_env, "worker", "--health-port", str(health_b))
        # Polling before anything is asked of it: a SIGTERM before the worker set up its drain
        # would end it as any process ends, not as a drained worker (seen on a loaded machine).
        wait_http(f"http://127.0.0.1:{health_b}/readyz", worker_b)
        contact_prompt = "Can I have the customer's email?"
        second = httpx.post(f"{api_2}/v1/alerts/alertmanager", json=alertmanager_alert("HarmfulOutputContact", contact_prompt), timeout=30)
        assert second.status_code == 202, second.text
        second_id = second.json()["incidents"][0]["incident_id"]
        waiting_for(second_id, "rollback")
        worker_b.signal(signal.SIGTERM)  # a rolling update takes B away: it drains and exits cleanly
        assert worker_b.popen.wait(60) == 0, worker_b.tail()
        approve(api_1, second_id, "rollback", ("alice", "oncall"))
        wait_for(ledger, lambda entries: any(second_id in e["idempotency_key"] and "/rollback/" in e["idempotency_key"] for e in entries))
        worker_a.kill()  # mid-rollback: the gateway committed, the activity never heard back
        killed_at = time.time()
        start("worker-b-again", worker_b_env, "worker")
        waiting_for(second_id, "hotfix")  # the fine-tuned version waits for a person
        approve(api_1, second_id, "hotfix", ("alice", "oncall"))
        second_closed = wait_for(lambda: read(second_id), lambda s: s.get("status") == "closed", timeout=180)

        # Every effect applied once; the retried rollback was replayed by the gateway, not re-applied.
        assert {s["status"] for s in second_closed["stages"]} == {"done"}
        entries = ledger()
        keys = [e["idempotency_key"] for e in entries]
        assert len(keys) == len(set(keys))
        rollback = next(e for e in entries if second_id in e["idempotency_key"] and "/rollback/" in e["idempotency_key"])
        assert rollback["presented"] == 2

        # Worker B verified the fix against the case worker A recorded in incident 1: the model saw
        # incident 1's prompt again after A was gone.
        upstream = shared["STANCH_TRAINER_URL"].removesuffix("/v1")
        seen = httpx.get(f"{upstream}/demo/requests", params={"limit": 200}).json()["data"]
        replayed = [
            entry
            for entry in seen
            if entry["path"] == "/v1/chat/completions" and entry["received_at"] > killed_at and secret_prompt in json.dumps(entry["body"])
        ]
        assert replayed, "incident 1's repro case was not replayed by worker B's verification"

        # Each notification reached the pager once, whichever worker sent it and however often retried.
        deliveries = Counter(request.headers["webhook-id"] for request in pager.recorder.requests if request.path == "/pager")
        assert deliveries and all(count == 1 for count in deliveries.values()), deliveries
        assert {first_id, second_id} <= {webhook_id.split("@")[0] for webhook_id in deliveries}

        # --- an auditor's host: nothing on it but the shared settings ---------------------------
        auditor = {**shared, "STANCH_HOME": str(tmp_path / "auditor")}
        bundle = tmp_path / "bundle"
        exported = stanch("audit", "export", "--out", str(bundle), "--to-store", "--json", env=auditor)
        assert exported.returncode == 0, exported.stdout + exported.stderr
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert not manifest.get("left_out"), manifest["left_out"]
        exported_files = [entry["path"] for entry in manifest["entries"]]
        for incident_id in (first_id, second_id):
            exported_for_incident = [path for path in exported_files if f"/{incident_id}@" in path]
            assert any(path.startswith("evidence/") for path in exported_for_incident), exported_files
            # Written by whichever worker ran the review; read back from the bucket here.
            for document in ("postmortem.md", "compliance.json", "tasks.json"):
                assert any(path.startswith("reviews/") and path.endswith(document) for path in exported_for_incident), exported_files
        verified_bundle = stanch("audit", "verify", str(bundle), env=auditor)
        assert verified_bundle.returncode == 0, verified_bundle.stdout + verified_bundle.stderr

        # The bundle itself went to the bucket: a regulator's host fetches it and verifies it there.
        stored = json.loads(exported.stdout)["stored"]
        regulator = {**shared, "STANCH_HOME": str(tmp_path / "regulator")}
        fetched = stanch("audit", "fetch", stored["location"], "--out", str(tmp_path / "fetched"), env=regulator)
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        verified_fetched = stanch("audit", "verify", str(tmp_path / "fetched"), env=regulator)
        assert verified_fetched.returncode == 0, verified_fetched.stdout + verified_fetched.stderr
    finally:
        stop_all(processes)
        for stop in reversed(stops):
            stop()
