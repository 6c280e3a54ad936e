"""Generic HTTP steps against a local server that records what it received and honours
Idempotency-Key: each action and its undo take effect once, secrets stay out of the record."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.contain import ContainActivities
from activities.evidence import EvidenceActivities
from activities.restore import RestoreActivities
from activities.rollback import RollbackActivities
from stanch.config.settings import Settings
from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.models.activity_io import ApplyInput, EvidenceInput, UndoInput
from stanch.runbooks.loader import load_runbook
from stanch.targets.base import TargetError
from stanch.targets.http import HttpTarget
from stanch.targets.registry import TargetRegistry
from stanch.targets.steps import render
from stanch.temporal.activity_deps import ActivityDeps
from tests.http_recorder import RecordingServer, json_patch, merge_patch

SECRET = "sk-master-0123456789abcdef"
TOKEN = "kube-token-fedcba9876543210"


@pytest.fixture
def server():
    with RecordingServer() as running:
        yield running


def http_target(server: RecordingServer, tmp_path: Path, **config) -> HttpTarget:
    settings = {"base_url": server.url, "headers": {"Authorization": "Bearer ${LITELLM_MASTER_KEY}"}, **config}
    return HttpTarget(HttpTarget.Config.model_validate(settings), name="litellm", base=tmp_path, env={"LITELLM_MASTER_KEY": SECRET})


def deps_for(server: RecordingServer, tmp_path: Path, env: dict[str, str] | None = None, more: str = "") -> ActivityDeps:
    (tmp_path / "kube-token").write_text(TOKEN + "\n")
    (tmp_path / "targets.yaml").write_text(
        "targets:\n"
        f"  litellm:\n    http: "
        f"{{base_url: '{server.url}', headers: {{Authorization: 'Bearer ${{LITELLM_MASTER_KEY}}'}}, step_secret_files: [kube-token]}}\n"
        f"  kubernetes:\n    http: {{base_url: '{server.url}', headers: {{Authorization: 'Bearer ${{file:kube-token}}'}}}}\n"
        f"  kserve:\n    http: {{base_url: '{server.url}', headers: {{Authorization: 'Bearer ${{file:kube-token}}'}}}}\n" + more
    )
    settings = Settings(home=tmp_path, targets=tmp_path / "targets.yaml", gateway_url="http://127.0.0.1:9")
    return ActivityDeps(settings=settings, targets=TargetRegistry(settings, env={"LITELLM_MASTER_KEY": SECRET, **(env or {})}))


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
    fields = {
        "incident_id": "inc-1",
        "occurrence": "inc-1@run1",
        "stage": "contain",
        "index": 0,
        "target": TargetRef(model="support-bot", version="2"),
        "action": BLOCK,
    }
    return ApplyInput(**{**fields, **changes})


async def test_an_action_and_its_undo_reach_the_server_once_each_even_when_retried(server, tmp_path):
    server.recorder.drop_after_commit[("POST", "/key/block")] = 1  # committed, then the answer is lost
    deps = deps_for(server, tmp_path)
    env = ActivityEnvironment()
    contain = ContainActivities(deps)
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

    undone = await env.run(RestoreActivities(deps).undo_action, UndoInput(incident_id="inc-1", applied=applied))
    await env.run(RestoreActivities(deps).undo_action, UndoInput(incident_id="inc-1", applied=applied))  # a retried undo
    assert undone.undo_key == f"{key}/undo" and undone.undone_at is not None
    assert [(e.path, e.key) for e in server.recorder.effects] == [("/key/block", key), ("/key/unblock", f"{key}/undo")]
    unblocks = [r for r in server.recorder.requests if r.path == "/key/unblock"]
    assert unblocks[0].body == {"key": "support-bot-widget"} and unblocks[0].headers["authorization"] == f"Bearer {SECRET}"


async def test_no_secret_reaches_the_record_even_when_the_server_echoes_it(server, tmp_path):
    server.answer("POST", "/key/block", lambda r: (200, {"echo": r.headers, "url": r.path}))
    deps = deps_for(server, tmp_path)
    action = BLOCK.model_copy(update={"params": {**BLOCK.params, "url": "/key/block", "headers": {"X-Token": "${file:kube-token}"}}})
    applied = await ActivityEnvironment().run(ContainActivities(deps).apply_containment, block_input(action=action))
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
        (ActionSpec(kind="http", params={"method": "POST"}), "params.url: "),
        (ActionSpec(kind="http", params={"url": "/x", "method": "BREW"}), "params.method: "),
        (
            ActionSpec(kind="http", params={"url": "/x", "body": {"v": "{before.old}"}}),
            "{before.old} used but no `before` read captures it",
        ),
        (ActionSpec(kind="http", params={"url": "/x", "undo": {"url": "/y", "expectt": [200]}}), "params.undo.expectt: "),
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
    with pytest.raises(TargetError) as no_prompts:
        target.chat_endpoint("m")
    assert no_prompts.value.retryable is False and "generic HTTP" in str(no_prompts.value) and "serves no prompts" in str(no_prompts.value)
    for call in (target.start_job("m", "finetune", {}, "k"), target.job_status("j"), target.state("m")):
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
    applied = AppliedAction(
        kind="http",
        stage="rollback",
        index=0,
        target=TargetRef(adapter="litellm", model="fraud"),
        idempotency_key="k1",
        inverse=outcome.inverse,
    )
    await target.undo(applied, "k1/undo")
    patches = [r for r in server.recorder.requests if r.method == "PATCH"]
    assert [p.body for p in patches] == [
        {"spec": {"predictor": {"canaryTrafficPercent": 0}}},
        {"spec": {"predictor": {"canaryTrafficPercent": restored}}},
    ]
    assert patches[0].headers["content-type"] == "application/merge-patch+json" and [p.key for p in patches] == ["k1", "k1/undo"]
    assert "idempotency-key" not in server.recorder.requests[0].headers, "reads carry no key"


REVISION = "deployment.kubernetes.io/revision"
RECIPES = Path(__file__).resolve().parents[2] / "runbooks" / "recipes"


def recipe_step(name: str, stage: str = "rollback", index: int = 0) -> ActionSpec:
    """A step exactly as a recipe writes it: the tests run the recipes themselves."""
    book = load_runbook(RECIPES / f"{name}.yaml").runbook
    return {"rollback": book.rollback, "contain": book.containment}[stage][index]


def template(image: str, hash_label: str | None = None) -> dict:
    labels = {"app": "fraud", **({"pod-template-hash": hash_label} if hash_label else {})}
    return {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "model", "image": image}]}}


def replica_set(revision: str, image: str) -> dict:
    return {"metadata": {"annotations": {REVISION: revision}}, "spec": {"template": template(image, f"h{image}")}}


class Cluster:
    """The Deployment `fraud` and its ReplicaSets, as the API server and the deployment controller
    keep them: a JSON patch applies (a failed `test` is a 422), and the ReplicaSet whose template
    the Deployment now has becomes the newest revision — so once a rollback lands, the good
    template is the newest revision and the bad one the revision below it."""

    DEPLOYMENT = "/apis/apps/v1/namespaces/ml/deployments/fraud"
    REPLICASETS = "/apis/apps/v1/namespaces/ml/replicasets?labelSelector=app%3Dfraud"

    def __init__(self, server: RecordingServer, images=("fraud:1", "fraud:2", "fraud:3")) -> None:
        self.replicasets = [replica_set(str(n), image) for n, image in enumerate(images, 1)]
        self.replicasets.append({"metadata": {}})  # no revision: never a candidate
        self.deployment = {
            "metadata": {"name": "fraud", "annotations": {REVISION: str(len(images))}},
            "spec": {"template": template(images[-1])},
        }
        self.patch_failures = 0  # the change lands, the answer says 500
        server.answer("GET", self.DEPLOYMENT, lambda r: (200, copy.deepcopy(self.deployment)))
        server.answer("GET", self.REPLICASETS, lambda r: (200, {"items": copy.deepcopy(self.replicasets)}))
        server.answer("PATCH", self.DEPLOYMENT, self.patch)

    def patch(self, request) -> tuple[int, dict]:
        status, patched = json_patch(self.deployment, request.body)
        if status != 200:
            return status, patched
        self.deployment = patched
        self.roll_out()
        if self.patch_failures:
            self.patch_failures -= 1
            return 500, {"kind": "Status", "message": "etcdserver: request timed out"}
        return 200, copy.deepcopy(self.deployment)

    def deploy(self, image: str) -> None:
        """Someone else deploys."""
        self.deployment["spec"]["template"] = template(image)
        self.roll_out()

    def roll_out(self) -> None:
        current = self.deployment["spec"]["template"]
        ranked = [rs for rs in self.replicasets if REVISION in rs["metadata"].get("annotations", {})]
        newest = max(int(rs["metadata"]["annotations"][REVISION]) for rs in ranked)

        def plain(rs):
            return json_patch(rs["spec"]["template"], [{"op": "replace", "path": "/metadata/labels", "value": {"app": "fraud"}}])[1]

        match = next((rs for rs in ranked if plain(rs) == current), None)
        if match is None:
            match = replica_set(str(newest + 1), current["spec"]["containers"][0]["image"])
            self.replicasets.append(match)
        elif int(match["metadata"]["annotations"][REVISION]) != newest:
            match["metadata"]["annotations"][REVISION] = str(newest + 1)
        self.deployment["metadata"]["annotations"][REVISION] = match["metadata"]["annotations"][REVISION]

    @property
    def running(self) -> str:
        return self.deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def rollback_input(**changes) -> ApplyInput:
    fields = {
        "incident_id": "inc-2",
        "occurrence": "inc-2@r",
        "stage": "rollback",
        "index": 0,
        "target": TargetRef(model="fraud"),
        "action": recipe_step("kubernetes-rollback"),
    }
    return ApplyInput(**{**fields, **changes})


async def test_kubernetes_rollback_patches_the_previous_replicaset_template_and_a_retry_keeps_what_it_read(server, tmp_path):
    cluster = Cluster(server)
    server.recorder.drop_after_commit[("PATCH", Cluster.DEPLOYMENT)] = 1  # the patch lands, the answer is lost
    deps = deps_for(server, tmp_path)
    heartbeats: list = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: heartbeats.extend(details)
    rollback = RollbackActivities(deps)
    with pytest.raises(ApplicationError):
        await env.run(rollback.apply_rollback, rollback_input())
    assert cluster.running == "fraud:2" and cluster.deployment["metadata"]["annotations"][REVISION] == "4"

    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2, heartbeat_details=list(heartbeats))
    applied = await retry.run(rollback.apply_rollback, rollback_input())

    reads = [r for r in server.recorder.requests if r.method == "GET"]
    assert len(reads) == 2, "the retry reused what the first attempt read"
    patches = [r for r in server.recorder.requests if r.method == "PATCH"]
    assert [p.body for p in patches] == [[{"op": "replace", "path": "/spec/template", "value": template("fraud:2")}]] * 2
    assert patches[0].headers["authorization"] == f"Bearer {TOKEN}" and patches[0].headers["content-type"] == "application/json-patch+json"
    assert len(server.recorder.effects) == 1
    assert applied.result["captured"]["revision"] == "3" and applied.inverse["after"] == {"template": template("fraud:2")}

    await ActivityEnvironment().run(RestoreActivities(deps).undo_action, UndoInput(incident_id="inc-2", applied=applied))
    check, undo = server.recorder.requests[-2:]
    assert (check.method, check.path) == ("GET", Cluster.DEPLOYMENT), "the undo checks the Deployment first"
    assert undo.body == [
        {"op": "test", "path": "/spec/template", "value": template("fraud:2")},
        {"op": "replace", "path": "/spec/template", "value": template("fraud:3")},
    ], "undo puts back what ran before, if the template is still the rollback's"
    assert undo.key == "inc-2@r/rollback/0/kubernetes:fraud/undo" and cluster.running == "fraud:3"
    assert TOKEN not in json.dumps(applied.model_dump(mode="json"))


async def test_a_responders_retry_reuses_what_the_failed_step_read_and_never_reads_the_rolled_back_deployment(server, tmp_path):
    """Temporal's retries ran out while the patch had landed; a responder chose retry. A fresh
    read would now see the good template running as the newest revision and the bad one below
    it — and roll back to the bad one. The failure carried the first reads out; the retry uses them."""
    cluster = Cluster(server)
    cluster.patch_failures = 5
    deps = deps_for(server, tmp_path)
    rollback = RollbackActivities(deps)
    heartbeats: list = []

    def beat(*details):
        return heartbeats.extend(details)

    for attempt in range(1, 6):  # Temporal's attempts: the last heartbeat carries the reads from one to the next
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, attempt=attempt, heartbeat_details=heartbeats[-1:])
        env.on_heartbeat = beat
        with pytest.raises(ApplicationError) as failed:
            await env.run(rollback.apply_rollback, rollback_input())
        assert failed.value.non_retryable is False
    assert len([r for r in server.recorder.requests if r.method == "GET"]) == 2, "Temporal's attempts read once"
    assert cluster.running == "fraud:2", "the change landed although every answer said 500"
    [carried] = failed.value.details
    assert carried["http_captured_for"] == "inc-2@r/rollback/0/kubernetes:fraud"
    assert carried["captured"]["previous_template"] == template("fraud:2") and carried["captured"]["current_template"] == template(
        "fraud:3"
    )
    reads = len([r for r in server.recorder.requests if r.method == "GET"])

    # The workflow hands the carried values to the activity it starts for the responder's retry.
    applied = await ActivityEnvironment().run(rollback.apply_rollback, rollback_input(captured=carried["captured"]))

    assert len([r for r in server.recorder.requests if r.method == "GET"]) == reads, "no second read"
    assert server.recorder.requests[-1].body == [{"op": "replace", "path": "/spec/template", "value": template("fraud:2")}]
    assert cluster.running == "fraud:2", "still the good template, not the bad one a re-read would pick"
    assert applied.inverse["captured"]["current_template"] == template("fraud:3"), "restore puts back what ran before the rollback"


async def test_restore_refuses_to_overwrite_a_deploy_made_since_the_rollback(server, tmp_path):
    cluster = Cluster(server)
    deps = deps_for(server, tmp_path)
    applied = await ActivityEnvironment().run(RollbackActivities(deps).apply_rollback, rollback_input())
    cluster.deploy("fraud:4")  # someone ships a fix by hand
    sent = len(server.recorder.requests)
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(RestoreActivities(deps).undo_action, UndoInput(incident_id="inc-2", applied=applied))
    assert refused.value.non_retryable is True
    assert "restore refused: /spec/template changed since the rollback; someone deployed since — undo by hand" in refused.value.message
    assert [r.method for r in server.recorder.requests[sent:]] == ["GET"], "only the check: no undo was sent"
    assert cluster.running == "fraud:4"


async def test_a_deploy_between_the_check_and_the_undo_fails_the_patchs_test(server, tmp_path):
    cluster = Cluster(server)
    deps = deps_for(server, tmp_path)
    applied = await ActivityEnvironment().run(RollbackActivities(deps).apply_rollback, rollback_input())

    def racing_read(request):
        answer = copy.deepcopy(cluster.deployment)
        cluster.deploy("fraud:4")  # right after the check read it
        return 200, answer

    server.answer("GET", Cluster.DEPLOYMENT, racing_read)
    with pytest.raises(ApplicationError, match=r"answered HTTP 422 .*testing value /spec/template failed") as refused:
        await ActivityEnvironment().run(RestoreActivities(deps).undo_action, UndoInput(incident_id="inc-2", applied=applied))
    assert refused.value.non_retryable is True and cluster.running == "fraud:4"


async def test_a_retried_undo_that_already_went_through_is_not_sent_again(server, tmp_path):
    cluster = Cluster(server)
    deps = deps_for(server, tmp_path)
    applied = await ActivityEnvironment().run(RollbackActivities(deps).apply_rollback, rollback_input())
    server.recorder.drop_after_commit[("PATCH", Cluster.DEPLOYMENT)] = 1
    undo = UndoInput(incident_id="inc-2", applied=applied)
    with pytest.raises(ApplicationError):
        await ActivityEnvironment().run(RestoreActivities(deps).undo_action, undo)
    assert cluster.running == "fraud:3"
    undone = await ActivityEnvironment().run(RestoreActivities(deps).undo_action, undo)
    assert undone.undone_at is not None
    assert len([r for r in server.recorder.requests if r.method == "PATCH"]) == 2, "one rollback, one undo: the retry only checked"


async def test_a_capture_that_finds_nothing_names_it(server, tmp_path):
    server.answer("GET", "/isvc/fraud", {"spec": {}})
    action = kserve(before=[{"url": "/isvc/{model}", "capture": {"percent": "/spec/predictor/canaryTrafficPercent"}}])
    with pytest.raises(
        TargetError, match=r"before\[0\] of target litellm: capture percent: 'predictor' is not in the answer of /isvc/fraud"
    ) as raised:
        await http_target(server, tmp_path).apply("fraud", action, "k1", "inc-1")
    assert raised.value.retryable is False
    assert [r.method for r in server.recorder.requests] == ["GET"], "nothing was changed"


# --- values from the alert are data: never a secret reference, never a path ----------------


@pytest.mark.parametrize(
    "model, why",
    [
        ("m-${STANCH_DECISION_KEYS}-${file:/etc/hostname}", "contains '$'"),
        ("fraud/../../../../api/v1/namespaces/kube-system/secrets/x", "has a '.' or '..' path segment"),
        ("..", "has a '.' or '..' path segment"),
        ("fraud\r\nX-Injected: 1", "contains a control character"),
        ("{before.x}", "contains a brace"),
    ],
)
async def test_an_alert_value_that_could_name_a_secret_or_climb_a_path_is_refused(server, tmp_path, model, why):
    (tmp_path / "hostname").write_text("worker-7\n")
    deps = deps_for(server, tmp_path, env={"STANCH_DECISION_KEYS": "decision-key-abcdef"})
    action = BLOCK.model_copy(update={"params": {**BLOCK.params, "url": "/models/{model}/block", "headers": {"X-Model": "{model}"}}})
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(
            ContainActivities(deps).apply_containment, block_input(action=action, target=TargetRef(model=model))
        )
    assert refused.value.non_retryable is True, "retrying cannot fix it: the fail-safe asks a human"
    assert f"{{model}} of this incident {why}" in refused.value.message
    assert "kube-system" not in refused.value.message and "STANCH_DECISION_KEYS" not in refused.value.message, "the value is not echoed"
    assert server.recorder.requests == [], "nothing was sent"


async def test_alert_values_are_percent_encoded_in_urls_and_left_as_they_are_elsewhere(server, tmp_path):
    deps = deps_for(server, tmp_path)
    action = BLOCK.model_copy(
        update={
            "params": {
                **BLOCK.params,
                "url": "/models/{model}/block?v={version}",
                "undo": {"url": "/models/{model}/unblock", "body": {"m": "{model}"}},
            }
        }
    )
    applied = await ActivityEnvironment().run(
        ContainActivities(deps).apply_containment, block_input(action=action, target=TargetRef(model="team a/fraud?x=1#y", version="2&z"))
    )
    [sent] = server.recorder.requests
    assert sent.path == "/models/team%20a%2Ffraud%3Fx%3D1%23y/block?v=2%26z"
    assert sent.body == {"key": "team a/fraud?x=1#y-widget", "reason": "stanch inc-1"}, "a body keeps the value as it is"
    assert applied.inverse["request"]["url"] == "/models/team%20a%2Ffraud%3Fx%3D1%23y/unblock" and applied.inverse["request"]["body"] == {
        "m": "team a/fraud?x=1#y"
    }


def test_nothing_is_filled_inside_a_secret_reference():
    params = {"url": "/x/{model}", "headers": {"A": "${file:keys/{model}}", "B": "${{model}}", "C": "{model}"}}
    assert render(params, {"model": "m"}) == {"url": "/x/m", "headers": {"A": "${file:keys/{model}}", "B": "${{model}}", "C": "m"}}


async def test_the_state_url_encodes_the_model_and_refuses_a_path(server, tmp_path):
    server.answer("GET", "/apis/deployments/team%20a%2Ffraud", {"spec": {}})
    target = http_target(server, tmp_path, state_url="/apis/deployments/{model}")
    assert (await target.state("team a/fraud"))["status"] == 200
    with pytest.raises(TargetError, match="the model name has a '.' or '..' path segment") as refused:
        await target.state("../secrets/x")
    assert refused.value.retryable is False and len(server.recorder.requests) == 1


# --- the undo's check: KServe's canary split ----------------------------------------------------


ISVC = "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices/fraud"


def kserve_service(server: RecordingServer, predictor: dict) -> dict:
    service = {"spec": {"predictor": predictor}}

    def patch(request):
        service.update(merge_patch(service, request.body))
        return 200, service

    server.answer("GET", ISVC, lambda r: (200, service))
    server.answer("PATCH", ISVC, patch)
    return service


@pytest.mark.parametrize("since, restored", [(0, 25), (50, None), (None, None)])
async def test_kserve_restore_puts_the_canary_back_only_while_it_is_still_at_zero(server, tmp_path, since, restored):
    service = kserve_service(server, {"canaryTrafficPercent": 25, "model": {"storageUri": "s3://m/7"}})
    deps = deps_for(server, tmp_path)
    step = ApplyInput(
        incident_id="inc-3",
        occurrence="inc-3@r",
        stage="rollback",
        index=0,
        target=TargetRef(model="fraud"),
        action=recipe_step("kserve-canary"),
    )
    applied = await ActivityEnvironment().run(RollbackActivities(deps).apply_rollback, step)
    assert applied.target.adapter == "kserve" and service["spec"]["predictor"]["canaryTrafficPercent"] == 0
    if since is None:
        service["spec"]["predictor"].pop("canaryTrafficPercent")  # a new manifest: all traffic to the latest revision
    else:
        service["spec"]["predictor"]["canaryTrafficPercent"] = since
    undo = ActivityEnvironment().run(RestoreActivities(deps).undo_action, UndoInput(incident_id="inc-3", applied=applied))
    if restored is not None:
        await undo
        assert service["spec"]["predictor"]["canaryTrafficPercent"] == restored
        return
    with pytest.raises(ApplicationError) as refused:
        await undo
    assert refused.value.non_retryable is True
    assert (
        "restore refused: /spec/predictor/canaryTrafficPercent changed since the rollback; someone changed the canary split or deployed "
        "since — undo by hand" in refused.value.message
    )
    assert [r.method for r in server.recorder.requests].count("PATCH") == 1, "no undo was sent"


@pytest.mark.parametrize(
    "params, expected",
    [
        (
            {"url": "/x", "body": {"v": "{after.v}"}, "after": {"v": "/v"}},
            "{after.v}: known only once the change answered — use it in the undo",
        ),
        ({"url": "/x", "undo": {"url": "/y", "body": {"v": "{after.v}"}}}, "{after.v} used but `after` captures no such value"),
        (
            {"url": "/x", "undo": {"url": "/y", "check": {"url": "/y", "pointer": "/v", "equals": "{before.old}"}}},
            "{before.old} used but no `before` read captures it",
        ),
        (
            {
                "url": "/x",
                "before": [
                    {"url": "/a", "capture": {"p": {"pointer": "/items", "rank_by": "/n", "below": "{before.r}"}}},
                    {"url": "/b", "capture": {"r": "/r"}},
                ],
            },
            "before[0] uses {before.r}: a read can use only what an earlier read captured",
        ),
    ],
)
def test_after_and_before_values_are_used_only_where_they_are_known(server, tmp_path, params, expected):
    with pytest.raises(TargetError, match=re.escape(expected)):
        http_target(server, tmp_path).plan("m", ActionSpec(kind="http", params=params), "k1")


# --- secret references: where a runbook step may use them --------------------------------------


@pytest.mark.parametrize(
    "header, url, expected",
    [
        ("${file:/etc/hostname}", "/x", "${file:/etc/hostname}: a runbook step may name only files in target litellm's secrets_dir"),
        ("${file:../outside}", "/x", "${file:../outside}: a runbook step may name only files in"),
        ("${file:encryption-keys}", "/x", "listed under step_secret_files; it has neither for 'encryption-keys'"),
        ("${file:evidence/abc.json}", "/x", "it has neither for 'evidence/abc.json'"),
        (
            "Bearer ${OTHER_TARGETS_KEY}",
            "/x",
            "only the variables target litellm lists under step_secret_env; ${OTHER_TARGETS_KEY} is not one",
        ),
        ("Bearer ${STANCH_DECISION_KEYS}", "/x", "a runbook step may not name STANCH_* variables"),
        ("${TEMPORAL_API_KEY}", "/x", "a runbook step may not name TEMPORAL_* variables"),
        ("Bearer ${LITELLM_MASTER_KEY}", "http://elsewhere.example/hook", "a secret reference goes only to the target's own origin"),
    ],
)
async def test_a_steps_secret_references_are_held_to_the_targets_own_origin_and_folder(server, tmp_path, header, url, expected):
    (tmp_path / "encryption-keys").write_text("k1:c2VjcmV0\n")
    action = ActionSpec(kind="http", params={"url": url, "headers": {"X-Key": header}})
    target = HttpTarget(
        HttpTarget.Config(base_url=server.url, step_secret_env=["LITELLM_MASTER_KEY"]),
        name="litellm",
        base=tmp_path,
        env={"LITELLM_MASTER_KEY": SECRET, "STANCH_DECISION_KEYS": "dk", "TEMPORAL_API_KEY": "tk", "OTHER_TARGETS_KEY": "ok"},
    )
    with pytest.raises(TargetError, match=re.escape(expected)) as refused:
        target.plan("m", action, "k1")  # `stanch runbooks validate` and `plan` say so
    assert refused.value.retryable is False
    with pytest.raises(TargetError, match=re.escape(expected)):
        await target.apply("m", action, "k1", "inc-1")
    assert server.recorder.requests == []


async def test_a_step_may_name_files_in_the_secrets_dir_or_listed_ones_and_the_targets_file_names_any(server, tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "hook-token").write_text("hook-token-value\n")
    listed = tmp_path / "elsewhere" / "sa-token"
    listed.parent.mkdir()
    listed.write_text("sa-token-value\n")
    config = {
        "base_url": server.url,
        "headers": {"Authorization": f"Bearer ${{file:{listed}}}"},
        "secrets_dir": "secrets",
        "step_secret_files": [str(listed)],
    }
    target = HttpTarget(HttpTarget.Config.model_validate(config), name="k", base=tmp_path, env={})
    action = ActionSpec(kind="http", params={"url": "/x", "headers": {"X-Hook": "${file:hook-token}", "X-Sa": f"${{file:{listed}}}"}})
    await target.apply("m", action, "k1", "inc-1")
    [sent] = server.recorder.requests
    assert sent.headers["authorization"] == "Bearer sa-token-value", "targets.yaml's references are trusted: any path"
    assert sent.headers["x-hook"] == "hook-token-value" and sent.headers["x-sa"] == "sa-token-value"
    with pytest.raises(TargetError, match=r"relative to target k's secrets_dir"):
        target.plan("m", ActionSpec(kind="http", params={"url": "/x", "headers": {"X": "${file:../kube-token}"}}), "k1")


@pytest.mark.parametrize(
    "params, expected",
    [
        (
            {"url": "/x", "body": {"key": "${LITELLM_MASTER_KEY}"}},
            "params.body: `${...}` in a body is sent as written, never expanded — secrets belong in headers",
        ),
        ({"url": "/x", "undo": {"url": "/y", "body": "k=${K}"}}, "params.undo.body: `${...}` in a body is sent as written"),
        ({"url": "/x?key=${K}"}, "params.url: no secret reference in a URL"),
        ({"url": "/x", "before": [{"url": "/r?k=${K}", "capture": {"v": "/v"}}]}, "params.before.0.url: no secret reference in a URL"),
    ],
)
async def test_secret_references_in_bodies_and_urls_are_refused_before_anything_is_sent(server, tmp_path, params, expected):
    target = http_target(server, tmp_path)
    with pytest.raises(TargetError, match=re.escape(expected)):
        target.plan("m", ActionSpec(kind="http", params=params), "k1")
    with pytest.raises(TargetError):
        await target.apply("m", ActionSpec(kind="http", params=params), "k1", "inc-1")
    assert server.recorder.requests == []


# --- evidence: only a target with no state to give is "unavailable" ----------------------------


def evidence_input(*step_targets: str) -> EvidenceInput:
    return EvidenceInput(
        incident_id="inc-4",
        runbook="r",
        runbook_sha256="0" * 64,
        target=TargetRef(model="fraud"),
        signals=[],
        step_targets=[TargetRef(adapter=name, model="fraud") for name in step_targets],
    )


async def test_evidence_records_unavailable_only_for_a_target_without_state(server, tmp_path):
    deps = deps_for(server, tmp_path, more=f"  snapshotted:\n    http: {{base_url: '{server.url}', state_url: '/apis/isvc/{{model}}'}}\n")
    deps.targets._targets["gateway"] = StateOnly({"served_version": "2"})
    server.answer("GET", "/apis/isvc/fraud", lambda r: (404, {"message": 'inferenceservices "fraud" not found'}))
    evidence = EvidenceActivities(deps)
    with pytest.raises(ApplicationError, match="not found") as failed:
        await ActivityEnvironment().run(evidence.snapshot_evidence, evidence_input("litellm", "snapshotted"))
    assert failed.value.non_retryable is True, "the workflow asks a human before any change"

    server.answer("GET", "/apis/isvc/fraud", {"spec": {"predictor": {"canaryTrafficPercent": 25}}})
    result = await ActivityEnvironment().run(evidence.snapshot_evidence, evidence_input("litellm", "snapshotted"))
    snapshot = json.loads(await deps.artefacts.get(result.location))["step_target_states"]
    assert snapshot["litellm"] == {"unavailable": "target litellm (generic HTTP) has no state_url: nothing to snapshot"}
    assert snapshot["snapshotted"]["response"] == {"spec": {"predictor": {"canaryTrafficPercent": 25}}}


class StateOnly:
    def __init__(self, state: dict) -> None:
        self._state = state

    async def state(self, model: str) -> dict:
        return self._state


def test_the_worker_logs_no_request_urls(monkeypatch, tmp_path):
    import asyncio

    from workers import main as worker_main

    class Connected(Exception):
        pass

    async def connect(*args, **kwargs):
        raise Connected

    levels = {name: logging.getLogger(name).level for name in ("", "httpx", "httpcore")}
    monkeypatch.setattr(worker_main, "connect", connect)
    try:
        for name in levels:
            logging.getLogger(name).setLevel(logging.INFO if name == "" else logging.NOTSET)  # the worker logs at INFO
        with pytest.raises(Connected):
            asyncio.run(worker_main.run_worker(Settings(home=tmp_path)))
        for name in ("httpx", "httpcore"):  # httpx logs each request's URL at INFO
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
