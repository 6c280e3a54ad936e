"""Generic HTTP actions in whole incidents, against a local control plane that records what it
received and honours Idempotency-Key.

- A live incident (time-skipping server, the real apply and lift activities, stand-ins for
  probes and review): each action and each undo takes effect exactly once, although the first
  request's answer is lost and Temporal retries it; no secret reaches the history.
- A dry-run incident, started the way `stanch runbooks plan --dry-run` starts it: the server
  receives nothing; the incident's actions record the calls they would have made.
- The CLI for real: `stanch up` with a targets file, `stanch runbooks plan --dry-run` as a
  process, a responder approving the rehearsal's restore with `stanch approve`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from rich.console import Console
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.contain import ContainActivities
from activities.hotfix import HotfixActivities
from activities.restore import RestoreActivities
from activities.rollback import RollbackActivities
from stanch.cli.plan import dry_run_input, follow, print_recorded, start_dry_run
from stanch.config.settings import Settings
from stanch.models.actions import ActionSpec, TargetRef
from stanch.models.decisions import FailureDecision
from stanch.models.incident import IncidentInput, IncidentState, IncidentStatus
from stanch.models.signals import Severity
from stanch.runbooks.loader import LoadedRunbook, default_runbooks_dir, load_runbook
from stanch.runbooks.schema import Hotfix, SeverityPolicy, Verify
from stanch.targets.registry import TargetRegistry
from stanch.temporal.activity_deps import ActivityDeps
from tests.conftest import installed_binary
from tests.e2e.processes import DEFAULT_PORTS, Process, free_port, stop_all, wait_for, wait_http
from tests.http_recorder import RecordingServer
from tests.workflow.conftest import alert
from tests.workflow.helpers import AsTheApi, until
from tests.workflow.standins import Script, stand_ins
from workflows.incident import IncidentWorkflow
from workflows.policies import ACTION_RETRY

SECRET = "sk-master-e2e-0123456789"
REAL = {"apply_containment", "apply_rollback", "apply_hotfix", "lift_action"}

BLOCK = ActionSpec(
    kind="http",
    target="litellm",
    description="block the widget's key",
    params={
        "url": "/key/block",
        "headers": {"X-Litellm-Key": "${LITELLM_MASTER_KEY}"},  # a step may name secrets too
        "body": {"key": "{model}-widget", "incident": "{incident_id}"},
        "expect": [200],
        "undo": {"url": "/key/unblock", "body": {"key": "{model}-widget"}, "expect": [200]},
    },
)
SWITCH = ActionSpec(
    kind="http",
    target="litellm",
    description="point the deployment at the fallback upstream",
    params={
        "before": [
            {"method": "GET", "url": "/model/info?litellm_model_id={model}", "capture": {"upstream": "/data/0/litellm_params/model"}}
        ],
        "url": "/model/update",
        "body": {"model_info": {"id": "{model}"}, "litellm_params": {"model": "openai/{model}-v1"}},
        "undo": {"url": "/model/update", "body": {"model_info": {"id": "{model}"}, "litellm_params": {"model": "{before.upstream}"}}},
    },
)
GUARDRAIL = ActionSpec(
    kind="http", target="litellm", params={"url": "/guardrails/{model}", "method": "PUT", "body": {"block": ["sk-live-"]}}
)


def http_runbook() -> LoadedRunbook:
    """harmful-output with its steps on the `litellm` target, and every gate automatic."""
    loaded = load_runbook(default_runbooks_dir() / "harmful-output.yaml")
    book = loaded.runbook.model_copy(
        update={
            "containment": [BLOCK],
            "rollback": [SWITCH],
            "hotfix": Hotfix(actions=[GUARDRAIL], verify=Verify(detectors=["secret"])),
            "policy": {severity: SeverityPolicy() for severity in Severity},
        }
    )
    return loaded.model_copy(update={"runbook": book})


def litellm_server(failing_updates: int = 0) -> RecordingServer:
    """LiteLLM as far as the steps go: /model/update really changes what /model/info says. The
    first `failing_updates` updates take effect and then answer 500 (a proxy timing out)."""
    server = RecordingServer()
    upstream = {"model": "openai/support-bot-v2"}
    failures = {"left": failing_updates}

    def update(request):
        upstream["model"] = request.body["litellm_params"]["model"]
        if failures["left"]:
            failures["left"] -= 1
            return 500, {"error": {"message": "upstream timed out"}}
        return 200, {"ok": True}

    server.answer("GET", "/model/info?litellm_model_id=support-bot", lambda request: (200, {"data": [{"litellm_params": dict(upstream)}]}))
    server.answer("POST", "/model/update", update)
    return server


def targets_file(folder: Path, url: str) -> Path:
    path = folder / "targets.yaml"
    path.write_text(
        f"targets:\n  litellm:\n    http: {{base_url: '{url}', headers: {{Authorization: 'Bearer ${{LITELLM_MASTER_KEY}}'}}, "
        "step_secret_env: [LITELLM_MASTER_KEY]}\n"  # the steps may name it too
    )
    return path


def readable(history: dict) -> str:
    """The history's JSON with every payload decoded (payload data is base64 in it)."""
    decoded: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    decoded.append(base64.b64decode(value).decode(errors="replace"))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(history)
    return json.dumps(history) + "\n".join(decoded)


@pytest_asyncio.fixture(scope="module")
async def env():
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=installed_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    yield environment
    await environment.shutdown()


def activities(tmp_path: Path, url: str) -> list:
    settings = Settings(
        home=tmp_path, targets=targets_file(tmp_path, url), gateway_url="http://127.0.0.1:9", upsert_search_attributes=False
    )
    deps = ActivityDeps(settings=settings, targets=TargetRegistry(settings, env={"LITELLM_MASTER_KEY": SECRET}))
    real = [
        ContainActivities(deps).apply_containment,
        RollbackActivities(deps).apply_rollback,
        HotfixActivities(deps).apply_hotfix,
        RestoreActivities(deps).undo_action,
    ]
    return real + [standin for standin in stand_ins(Script()) if standin.__name__ not in REAL]


async def test_each_http_action_and_its_undo_reach_the_control_plane_exactly_once(env, tmp_path):
    client: Client = env.client
    with litellm_server() as server:
        # The first answers are lost after the change went through: Temporal retries each step.
        server.recorder.drop_after_commit[("POST", "/key/block")] = 1
        server.recorder.drop_after_commit[("POST", "/model/update")] = 1
        task_queue = f"tq-{uuid.uuid4()}"
        loaded = http_runbook()
        input = IncidentInput(
            incident_id=f"inc-{uuid.uuid4()}",
            runbook=loaded.runbook,
            runbook_sha256=loaded.sha256,
            target=TargetRef(model="support-bot", version="2"),
            dedup_key=f"test/{uuid.uuid4()}",
            upsert_search_attributes=False,
        )
        async with Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=activities(tmp_path, server.url)):
            handle = await client.start_workflow(
                IncidentWorkflow.run,
                input,
                id=input.incident_id,
                task_queue=task_queue,
                start_signal="add_signal",
                start_signal_args=[alert()],
            )
            final: IncidentState = await asyncio.wait_for(handle.result(), 120)  # a step waiting on a human fails, not hangs
            history = readable((await handle.fetch_history()).to_json_dict())
        recorder = server.recorder

    assert final.status == IncidentStatus.closed, final.close_reason
    occurrence = final.occurrence
    keys = {a.stage: a.idempotency_key for a in final.actions}
    assert keys == {stage: f"{occurrence}/{stage}/0/litellm:support-bot" for stage in ("contain", "rollback", "hotfix")}
    assert all(a.target.adapter == "litellm" for a in final.actions), "each action records the target that took it"
    effects = [(e.method, e.path, e.key) for e in recorder.effects]
    assert effects == [
        ("POST", "/key/block", keys["contain"]),
        ("POST", "/model/update", keys["rollback"]),
        ("PUT", "/guardrails/support-bot", keys["hotfix"]),
        ("POST", "/model/update", keys["rollback"] + "/undo"),  # restore: reverse order
        ("POST", "/key/unblock", keys["contain"] + "/undo"),
    ], "each action and each undo took effect exactly once; the hotfix stays"
    blocks = [r for r in recorder.requests if r.path == "/key/block"]
    assert [r.key for r in blocks] == [keys["contain"]] * 2, "the retry carried the same key and the server replayed"
    assert blocks[0].body == {"key": "support-bot-widget", "incident": input.incident_id}
    assert blocks[0].headers["x-litellm-key"] == SECRET
    updates = [r.body["litellm_params"]["model"] for r in recorder.requests if r.path == "/model/update"]
    assert updates == ["openai/support-bot-v1"] * 2 + ["openai/support-bot-v2"], "the undo put back the upstream read before"
    reads = [r for r in recorder.requests if r.method == "GET"]
    assert len(reads) == 1, "the retry reused what the first attempt read (it kept it in its heartbeat)"
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in recorder.requests)
    assert SECRET not in history and "${LITELLM_MASTER_KEY}" in history, "history keeps the reference, never the secret"


async def test_a_responders_retry_after_the_retries_ran_out_reuses_what_the_step_read(env, tmp_path):
    """The rollback's update lands but answers 500 on every one of Temporal's attempts; the
    fail-safe asks a human, who chooses retry. The new activity has no heartbeat: the workflow
    hands it what the failed one read, so it does not read the already-switched upstream as the
    one to restore."""
    client: Client = env.client
    with litellm_server(failing_updates=ACTION_RETRY.maximum_attempts) as server:
        task_queue = f"tq-{uuid.uuid4()}"
        loaded = http_runbook()
        input = IncidentInput(
            incident_id=f"inc-{uuid.uuid4()}",
            runbook=loaded.runbook,
            runbook_sha256=loaded.sha256,
            target=TargetRef(model="support-bot", version="2"),
            dedup_key=f"test/{uuid.uuid4()}",
            upsert_search_attributes=False,
        )
        async with Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=activities(tmp_path, server.url)):
            handle = await client.start_workflow(
                IncidentWorkflow.run,
                input,
                id=input.incident_id,
                task_queue=task_queue,
                start_signal="add_signal",
                start_signal_args=[alert()],
            )

            def rollback_failed(s):
                return s.status == IncidentStatus.awaiting_decision and s.stage("rollback").status == "failed"

            current = await until(handle, rollback_failed, attempts=1200)
            assert "upstream timed out" in current.stage("rollback").detail
            await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="rollback", by="alice", choice="retry"))
            final: IncidentState = await asyncio.wait_for(handle.result(), 120)  # a step waiting on a human fails, not hangs
        recorder = server.recorder

    assert final.status == IncidentStatus.closed, final.close_reason
    reads = [r for r in recorder.requests if r.method == "GET"]
    assert len(reads) == 1, "the responder's retry reused what the failed step read"
    [rollback] = [a for a in final.actions if a.stage == "rollback"]
    assert rollback.result["captured"] == {"upstream": "openai/support-bot-v2"}
    updates = [r.body["litellm_params"]["model"] for r in recorder.requests if r.path == "/model/update"]
    assert updates == ["openai/support-bot-v1"] * (ACTION_RETRY.maximum_attempts + 1) + ["openai/support-bot-v2"], (
        "restore put back what ran before"
    )


async def test_a_dry_run_incident_records_what_it_would_call_and_calls_nothing(env, tmp_path):
    client: Client = env.client
    settings = Settings(home=tmp_path, upsert_search_attributes=False)
    output = io.StringIO()
    console = Console(file=output, width=400)
    with litellm_server() as server:
        task_queue = f"tq-{uuid.uuid4()}"
        loaded, signal = http_runbook(), alert()
        input = dry_run_input(loaded, signal, settings)
        async with Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=activities(tmp_path, server.url)):
            handle = await start_dry_run(client, input, signal, task_queue)
            final = await follow(handle, console, wait_seconds=60, poll_seconds=0.1)
        print_recorded(console, final)
        received = list(server.recorder.requests)

    assert received == [], "a dry run touches no control plane"
    assert input.incident_id.startswith("dryrun-harmful-output-support-bot-") and input.dry_run
    assert final.status == IncidentStatus.closed
    by_stage = {a.stage: a for a in final.actions}
    assert all(a.result["dry_run"] is True for a in final.actions)
    block = by_stage["contain"].result["would_call"]
    assert [(c["method"], c["url"]) for c in block] == [("POST", f"{server.url}/key/block")]
    assert block[0]["body"] == {"key": "support-bot-widget", "incident": input.incident_id}
    assert [c["url"] for c in by_stage["rollback"].result["would_call"]] == [
        f"{server.url}/model/info?litellm_model_id=support-bot",
        f"{server.url}/model/update",
    ]
    assert by_stage["contain"].undone_at and by_stage["contain"].result["undo_would_call"][0]["url"] == f"{server.url}/key/unblock"
    assert by_stage["hotfix"].reversible is False and by_stage["hotfix"].undone_at is None, "a step with no undo is never undone"
    assert final.stage("verify").detail.startswith("dry run: would replay"), "nothing was fixed, so nothing is probed"
    # The timeline says what a live run would have done, and by which path past the gate.
    assert any(entry.message.startswith("contain: dry run, would apply http ") for entry in final.timeline)
    text = output.getvalue()
    assert f"→ POST {server.url}/key/block" in text and f"← POST {server.url}/key/unblock" in text


@pytest.mark.e2e
@DEFAULT_PORTS
def test_stanch_runbooks_plan_dry_run_rehearses_an_incident_on_a_running_stanch(tmp_path):
    home = tmp_path / "home"
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api = f"http://127.0.0.1:{ports['api']}"
    runbook = tmp_path / "rehearsal.yaml"
    runbook.write_text(
        (default_runbooks_dir() / "harmful-output.yaml").read_text().split("\ncontainment:")[0] + "\ncontainment:\n"
        "  - kind: http\n    target: litellm\n    params: {url: /key/block, body: {key: '{model}-widget'}, undo: {url: /key/unblock, "
        "body: {key: '{model}-widget'}}}\n"
        "rollback:\n"
        "  - kind: rollback_to_previous\n    params: {bad_version: '{version}'}\n"
    )
    alert_path = tmp_path / "alert.json"
    alert_path.write_text(alert(signal_id=f"dry-{uuid.uuid4()}").model_dump_json())
    processes: list[Process] = []
    with RecordingServer() as server:
        env = {"STANCH_HOME": str(home), "STANCH_TARGETS": str(targets_file(tmp_path, server.url)), "LITELLM_MASTER_KEY": SECRET}
        args = ["up", "--home", str(home), "--temporal-port", str(ports["temporal"]), "--ui-port", str(ports["ui"])]
        args += ["--api-port", str(ports["api"]), "--gateway-port", str(ports["gateway"])]
        try:
            processes.append(up := Process("up", args, env, tmp_path))
            wait_http(f"{api}/readyz", up, timeout=120)
            wait_http(f"http://127.0.0.1:{ports['gateway']}/healthz", up, timeout=60)
            cli_env = {
                **os.environ,
                **env,
                "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
                "STANCH_GATEWAY_URL": f"http://127.0.0.1:{ports['gateway']}",
            }
            rehearsal = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stanch",
                    "runbooks",
                    "plan",
                    str(runbook),
                    "--alert",
                    str(alert_path),
                    "--dry-run",
                    "--wait",
                    "120",
                ],
                env=cli_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            first = rehearsal.stdout.readline()
            assert first.startswith("dry run dryrun-"), first + rehearsal.stdout.read()
            incident_id = first.split()[2]

            def read():
                return httpx.get(f"{api}/v1/incidents/{incident_id}").json()

            # The rehearsal grades high (the repro leaks a key): harmful-output gates contain and
            # rollback on four eyes, and restore on one responder — exactly as a live incident.
            for stage in ("contain", "rollback", "restore"):
                wait_for(read, lambda s, stage=stage: (s.get("pending_approval") or {}).get("stage") == stage, timeout=90)
                for by, role in (("alice", "oncall"), ("sam", "safety"))[: 1 if stage == "restore" else 2]:
                    approval = subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "stanch",
                            "approve",
                            incident_id,
                            "--stage",
                            stage,
                            "--api",
                            api,
                            "--by",
                            by,
                            "--role",
                            role,
                        ],
                        env=cli_env,
                        capture_output=True,
                        text=True,
                        timeout=60,
                        check=False,
                    )
                    assert approval.returncode == 0, approval.stdout + approval.stderr
            out, _ = rehearsal.communicate(timeout=150)
        finally:
            stop_all(processes)
        received = list(server.recorder.requests)
    assert rehearsal.returncode == 0, first + out
    assert received == [], "the rehearsal made no call"
    assert f"→ POST {server.url}/key/block" in out and f"← POST {server.url}/key/unblock" in out
    assert "/admin/apply" in out, "the gateway rollback it would have made is listed too"
    assert "closed: what the incident would have called" in out
