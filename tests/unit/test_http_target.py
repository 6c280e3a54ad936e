"""Generic HTTP steps against a local server that records what it received and honours
Idempotency-Key: each action and its undo take effect once, secrets stay out of the record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.actions import render
from activities.containment import ContainmentActivities
from activities.deps import ActivityDeps
from activities.models import ApplyInput, LiftInput
from activities.restore import RestoreActivities
from activities.rollback import RollbackActivities
from stanch.config import Settings
from stanch.models import ActionSpec, AppliedAction, TargetRef
from stanch.targets.base import TargetError
from stanch.targets.http import HttpTarget
from stanch.targets.registry import TargetRegistry
from tests.http_recorder import RecordingServer

SECRET = "sk-master-0123456789abcdef"
TOKEN = "kube-token-fedcba9876543210"


@pytest.fixture
def server():
    with RecordingServer() as running:
        yield running


def http_target(server: RecordingServer, tmp_path: Path, **config) -> HttpTarget:
    settings = {"base_url": server.url, "headers": {"Authorization": "Bearer ${LITELLM_MASTER_KEY}"}, **config}
    return HttpTarget(HttpTarget.Config.model_validate(settings), name="litellm", base=tmp_path, env={"LITELLM_MASTER_KEY": SECRET})


def deps_for(server: RecordingServer, tmp_path: Path) -> ActivityDeps:
    (tmp_path / "kube-token").write_text(TOKEN + "\n")
    (tmp_path / "targets.yaml").write_text(
        "targets:\n"
        f"  litellm:\n    http: {{base_url: '{server.url}', headers: {{Authorization: 'Bearer ${{LITELLM_MASTER_KEY}}'}}}}\n"
        f"  kubernetes:\n    http: {{base_url: '{server.url}', headers: {{Authorization: 'Bearer ${{file:kube-token}}'}}}}\n"
    )
    settings = Settings(home=tmp_path, targets=tmp_path / "targets.yaml", gateway_url="http://127.0.0.1:9")
    return ActivityDeps(settings=settings, targets=TargetRegistry(settings, env={"LITELLM_MASTER_KEY": SECRET}))


BLOCK = ActionSpec(
    kind="http",
    target="litellm",
    description="block the key",
    params={
        "method": "POST",
        "url": "/key/block",
        "headers": {"X-Incident": "{incident_id}"},
        "body": {"key": "{model}-widget", "reason": "stanch {incident_id}"},
        "expect": [200],
        "undo": {"method": "POST", "url": "/key/unblock", "body": {"key": "{model}-widget"}, "expect": [200]},
    },
)


def kserve(model: str = "fraud", **changes) -> ActionSpec:
    """The KServe step as the activity hands it to the target: {model} filled in."""
    return ActionSpec(kind="http", params=render({**KSERVE_PARAMS, **changes}, {"model": model}))


def block_input(**changes) -> ApplyInput:
    fields = {"incident_id": "inc-1", "occurrence": "inc-1@run1", "stage": "contain", "index": 0, "target": TargetRef(model="support-bot", version="2"), "action": BLOCK}
    return ApplyInput(**{**fields, **changes})


async def test_an_action_and_its_undo_reach_the_server_once_each_even_when_retried(server, tmp_path):
    server.recorder.drop_after_commit[("POST", "/key/block")] = 1  # committed, then the answer is lost
    deps = deps_for(server, tmp_path)
    env = ActivityEnvironment()
    contain = ContainmentActivities(deps)
    with pytest.raises(ApplicationError) as first:
        await env.run(contain.apply_containment, block_input())
    assert first.value.non_retryable is False, "a lost answer is transient: Temporal retries"
    applied = await env.run(contain.apply_containment, block_input())  # the retry, same business identity

    key = "inc-1@run1/contain/0/litellm:support-bot"
    assert applied.idempotency_key == key and applied.target.adapter == "litellm", "the step's own target is recorded"
    blocks = [r for r in server.recorder.requests if r.path == "/key/block"]
    assert [r.key for r in blocks] == [key, key], "the retry carried the same Idempotency-Key"
    assert blocks[0].headers["authorization"] == f"Bearer {SECRET}"
    assert blocks[0].headers["x-incident"] == "inc-1"
    assert blocks[0].body == {"key": "support-bot-widget", "reason": "stanch inc-1"}
    assert applied.inverse["request"]["url"] == "/key/unblock" and applied.reversible

    lifted = await env.run(RestoreActivities(deps).lift_action, LiftInput(incident_id="inc-1", applied=applied))
    await env.run(RestoreActivities(deps).lift_action, LiftInput(incident_id="inc-1", applied=applied))  # a retried undo
    assert lifted.undo_key == f"{key}/undo" and lifted.undone_at is not None
    assert [(e.path, e.key) for e in server.recorder.effects] == [("/key/block", key), ("/key/unblock", f"{key}/undo")]
    unblocks = [r for r in server.recorder.requests if r.path == "/key/unblock"]
    assert unblocks[0].body == {"key": "support-bot-widget"} and unblocks[0].headers["authorization"] == f"Bearer {SECRET}"


async def test_no_secret_reaches_the_record_even_when_the_server_echoes_it(server, tmp_path):
    server.answer("POST", "/key/block", lambda r: (200, {"echo": r.headers, "url": r.path}))
    deps = deps_for(server, tmp_path)
    action = BLOCK.model_copy(update={"params": {**BLOCK.params, "url": "/key/block", "headers": {"X-Token": "${file:kube-token}"}}})
    applied = await ActivityEnvironment().run(ContainmentActivities(deps).apply_containment, block_input(action=action))
    record = applied.model_dump_json()
    assert server.recorder.requests[0].headers["x-token"] == TOKEN
    assert SECRET not in record and TOKEN not in record
    assert "Bearer ${LITELLM_MASTER_KEY}" in record and "${file:kube-token}" in record, "the references are what is kept"


@pytest.mark.parametrize(
    "status, retryable",
    [(503, True), (500, True), (429, True), (408, True), (404, False), (422, False), (409, False)],
)
async def test_transient_failures_retry_and_the_rest_fail_at_once_with_the_servers_message(server, tmp_path, status, retryable):
    server.answer("POST", "/key/block", lambda r: (status, {"detail": f"said {status} to {r.headers['authorization']}"}))
    target = http_target(server, tmp_path)
    with pytest.raises(TargetError) as raised:
        await target.apply("support-bot", BLOCK, "k1", "inc-1")
    assert raised.value.retryable is retryable
    message = str(raised.value)
    assert f"answered HTTP {status} (expected [200])" in message and f"said {status} to Bearer ${{LITELLM_MASTER_KEY}}" in message
    assert SECRET not in message


async def test_an_unreachable_server_is_transient(tmp_path):
    target = HttpTarget(HttpTarget.Config(base_url="http://127.0.0.1:9"), name="down", base=tmp_path, env={})
    with pytest.raises(TargetError, match=r"down: POST http://127.0.0.1:9/key/block failed: ConnectError") as raised:
        await target.apply("m", BLOCK, "k1", "inc-1")
    assert raised.value.retryable is True


async def test_default_headers_go_only_to_the_targets_own_host(server, tmp_path):
    with RecordingServer() as elsewhere:
        action = ActionSpec(kind="http", params={"url": f"{elsewhere.url}/hook", "headers": {"X-Step": "1"}})
        await http_target(server, tmp_path).apply("m", action, "k1", "inc-1")
        received = elsewhere.recorder.requests[0]
    assert "authorization" not in received.headers, "the target's credentials never follow an absolute URL to another host"
    assert received.headers["x-step"] == "1" and received.headers["idempotency-key"] == "k1"


@pytest.mark.parametrize(
    "action, expected",
    [
        (ActionSpec(kind="block_prompts", params={"patterns": ["x"]}), "runs `kind: http` steps, not 'block_prompts'"),
        (ActionSpec(kind="http", params={"method": "POST"}), "params.url: Field required"),
        (ActionSpec(kind="http", params={"url": "/x", "method": "BREW"}), "params.method: Input should be"),
        (ActionSpec(kind="http", params={"url": "/x", "body": {"v": "{before.old}"}}), "{before.old} used but no `before` read captures it"),
        (ActionSpec(kind="http", params={"url": "/x", "undo": {"url": "/y", "expectt": [200]}}), "params.undo.expectt: Extra inputs"),
    ],
)
async def test_a_step_that_cannot_run_fails_at_once_and_in_plan(server, tmp_path, action, expected):
    target = http_target(server, tmp_path)
    with pytest.raises(TargetError, match=expected.replace("(", r"\(").replace("[", r"\[").replace("{", r"\{")) as raised:
        target.plan("m", action, "k1")
    assert raised.value.retryable is False
    with pytest.raises(TargetError):
        await target.apply("m", action, "k1", "inc-1")
    assert server.recorder.requests == []


async def test_plan_lists_every_call_with_its_undo_and_calls_nothing(server, tmp_path):
    action = kserve().model_copy(update={"description": "canary to 0"})
    calls = http_target(server, tmp_path).plan("fraud", action, "k1")
    assert [(c.method, c.url) for c in calls] == [("GET", f"{server.url}/isvc/fraud"), ("PATCH", f"{server.url}/isvc/fraud")]
    assert calls[0].operation == "reads {before.percent}" and calls[1].operation == "canary to 0"
    assert [(u.method, u.body) for u in calls[1].undo] == [("PATCH", {"spec": {"predictor": {"canaryTrafficPercent": "{before.percent}"}}})]
    assert all(c.target == "litellm" and c.adapter == "http" for c in calls)
    assert server.recorder.requests == []


async def test_what_cannot_be_done_over_generic_http_says_so(server, tmp_path):
    target = http_target(server, tmp_path)
    for call in (target.probe("m", "hi"), target.start_job("m", "finetune", {}, "k"), target.job_status("j"), target.state("m")):
        with pytest.raises(TargetError) as raised:
            await call
        assert raised.value.retryable is False and "generic HTTP" in str(raised.value)


async def test_state_reads_the_configured_url(server, tmp_path):
    server.answer("GET", "/apis/deployments/fraud", {"spec": {"replicas": 3}})
    state = await http_target(server, tmp_path, state_url="/apis/deployments/{model}").state("fraud")
    assert state == {"target": "litellm", "status": 200, "response": {"spec": {"replicas": 3}}}
    assert server.recorder.requests[0].headers["authorization"] == f"Bearer {SECRET}"


# --- reading before the change: KServe's percent, Kubernetes' previous template ---------------

KSERVE_PARAMS = {
    "before": [{"url": "/isvc/{model}", "capture": {"percent": {"pointer": "/spec/predictor/canaryTrafficPercent", "default": 100}}}],
    "method": "PATCH",
    "url": "/isvc/{model}",
    "headers": {"Content-Type": "application/merge-patch+json"},
    "body": {"spec": {"predictor": {"canaryTrafficPercent": 0}}},
    "undo": {
        "method": "PATCH",
        "url": "/isvc/{model}",
        "headers": {"Content-Type": "application/merge-patch+json"},
        "body": {"spec": {"predictor": {"canaryTrafficPercent": "{before.percent}"}}},
    },
}


@pytest.mark.parametrize("before, restored", [({"canaryTrafficPercent": 25}, 25), ({}, 100)])
async def test_undo_restores_the_value_read_before_the_change(server, tmp_path, before, restored):
    server.answer("GET", "/isvc/fraud", {"spec": {"predictor": before}})
    target = http_target(server, tmp_path)
    outcome = await target.apply("fraud", kserve(), "k1", "inc-1")
    assert outcome.result["captured"] == {"percent": restored}
    applied = AppliedAction(kind="http", stage="rollback", index=0, target=TargetRef(adapter="litellm", model="fraud"), idempotency_key="k1", inverse=outcome.inverse)
    await target.undo(applied, "k1/undo")
    patches = [r for r in server.recorder.requests if r.method == "PATCH"]
    assert [p.body for p in patches] == [{"spec": {"predictor": {"canaryTrafficPercent": 0}}}, {"spec": {"predictor": {"canaryTrafficPercent": restored}}}]
    assert patches[0].headers["content-type"] == "application/merge-patch+json" and [p.key for p in patches] == ["k1", "k1/undo"]
    assert "idempotency-key" not in server.recorder.requests[0].headers, "reads carry no key"


def template(image: str, hash_label: str | None = None) -> dict:
    labels = {"app": "fraud", **({"pod-template-hash": hash_label} if hash_label else {})}
    return {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "model", "image": image}]}}


def replica_set(revision: str, image: str) -> dict:
    return {"metadata": {"annotations": {"deployment.kubernetes.io/revision": revision}}, "spec": {"template": template(image, f"h{revision}")}}


K8S_ROLLBACK = ActionSpec(
    kind="http",
    target="kubernetes",
    params={
        "before": [
            {"url": "/apis/apps/v1/namespaces/ml/deployments/{model}", "capture": {"current": "/spec/template"}},
            {
                "url": "/apis/apps/v1/namespaces/ml/replicasets?labelSelector=app%3D{model}",
                "capture": {
                    "previous": {
                        "pointer": "/items",
                        "rank_by": "/metadata/annotations/deployment.kubernetes.io~1revision",
                        "index": 1,
                        "value": "/spec/template",
                        "drop": ["/metadata/labels/pod-template-hash"],
                    }
                },
            },
        ],
        "method": "PATCH",
        "url": "/apis/apps/v1/namespaces/ml/deployments/{model}",
        "headers": {"Content-Type": "application/json-patch+json"},
        "body": [{"op": "replace", "path": "/spec/template", "value": "{before.previous}"}],
        "expect": [200],
        "undo": {
            "method": "PATCH",
            "url": "/apis/apps/v1/namespaces/ml/deployments/{model}",
            "headers": {"Content-Type": "application/json-patch+json"},
            "body": [{"op": "replace", "path": "/spec/template", "value": "{before.current}"}],
            "expect": [200],
        },
    },
)


async def test_kubernetes_rollback_patches_the_previous_replicaset_template_and_a_retry_keeps_what_it_read(server, tmp_path):
    deployment = {"spec": {"template": template("fraud:3")}}
    server.answer("GET", "/apis/apps/v1/namespaces/ml/deployments/fraud", lambda r: (200, deployment))
    server.answer(
        "GET",
        "/apis/apps/v1/namespaces/ml/replicasets?labelSelector=app%3Dfraud",
        {"items": [replica_set("1", "fraud:1"), replica_set("3", "fraud:3"), replica_set("2", "fraud:2"), {"metadata": {}}]},
    )
    server.recorder.drop_after_commit[("PATCH", "/apis/apps/v1/namespaces/ml/deployments/fraud")] = 1
    deps = deps_for(server, tmp_path)
    heartbeats: list = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: heartbeats.extend(details)
    rollback = RollbackActivities(deps)
    step = ApplyInput(incident_id="inc-2", occurrence="inc-2@r", stage="rollback", index=0, target=TargetRef(model="fraud"), action=K8S_ROLLBACK)
    with pytest.raises(ApplicationError):
        await env.run(rollback.apply_rollback, step)
    deployment["spec"]["template"] = template("fraud:2")  # the patch went through before the answer was lost

    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2, heartbeat_details=list(heartbeats))
    applied = await retry.run(rollback.apply_rollback, step)

    reads = [r for r in server.recorder.requests if r.method == "GET"]
    assert len(reads) == 2, "the retry reused what the first attempt read"
    patches = [r for r in server.recorder.requests if r.method == "PATCH"]
    assert [p.body for p in patches] == [[{"op": "replace", "path": "/spec/template", "value": template("fraud:2")}]] * 2
    assert patches[0].headers["authorization"] == f"Bearer {TOKEN}" and patches[0].headers["content-type"] == "application/json-patch+json"
    assert len(server.recorder.effects) == 1

    await ActivityEnvironment().run(RestoreActivities(deps).lift_action, LiftInput(incident_id="inc-2", applied=applied))
    undo = server.recorder.requests[-1]
    assert undo.body == [{"op": "replace", "path": "/spec/template", "value": template("fraud:3")}], "undo puts back what ran before"
    assert undo.key == "inc-2@r/rollback/0/kubernetes:fraud/undo"
    assert TOKEN not in json.dumps(applied.model_dump(mode="json"))


async def test_a_capture_that_finds_nothing_names_it(server, tmp_path):
    server.answer("GET", "/isvc/fraud", {"spec": {}})
    action = kserve(before=[{"url": "/isvc/{model}", "capture": {"percent": "/spec/predictor/canaryTrafficPercent"}}])
    with pytest.raises(TargetError, match=r"before\[0\] of target litellm: capture percent: 'predictor' is not in the answer of /isvc/fraud") as raised:
        await http_target(server, tmp_path).apply("fraud", action, "k1", "inc-1")
    assert raised.value.retryable is False
    assert [r.method for r in server.recorder.requests] == ["GET"], "nothing was changed"
