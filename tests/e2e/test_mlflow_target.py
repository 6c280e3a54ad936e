"""Rollback on a real MLflow Model Registry: a local `mlflow server` (SQLite, loopback), models
registered with MLflow's own client, Stanch's real rollback, restore and evidence activities
driving the registry through its REST API, and the alias read back through MLflow's client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.evidence import EvidenceActivities
from activities.restore import RestoreActivities
from activities.rollback import RollbackActivities
from stanch.config.settings import Settings
from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.models.activity_io import ApplyInput, UndoInput
from stanch.models.incident import IncidentStatus
from stanch.models.signals import Severity
from stanch.runbooks.schema import Approval, SeverityRules, StageGate
from stanch.targets.base import TargetError
from stanch.targets.mlflow import MlflowTarget
from stanch.targets.mlflow_versions import FineTunedModel
from stanch.targets.registry import TargetRegistry
from stanch.temporal.activity_deps import ActivityDeps
from stanch.trust import assertions
from tests.conftest import installed_binary
from tests.e2e.processes import free_port, wait_http
from tests.workflow.conftest import TEST_DECISION_KEYS, alert, incident_input
from tests.workflow.helpers import approve, until, waiting_on
from tests.workflow.standins import Script, stand_ins
from workflows.incident import IncidentWorkflow

pytestmark = pytest.mark.e2e

ROLLBACK = ActionSpec(kind="rollback_alias", params={"bad_version": "{version}"}, description="serve the last good version again")


@dataclass
class MlflowServer:
    """`mlflow server` in its own process group (it starts a uvicorn child), logging to a file."""

    url: str
    popen: subprocess.Popen
    log_path: Path
    name: str = "mlflow server"

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            if self.popen.poll() is None:
                os.killpg(self.popen.pid, sig)
                try:
                    self.popen.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
            # the group may outlive its leader: make sure no child is left
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log_path = folder / "server.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            [
                installed_binary("mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{folder}/mlflow.db",
                "--artifacts-destination",
                str(folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            # No background job runner: the registry needs none, and it only slows start-up.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = MlflowServer(url=f"http://127.0.0.1:{port}", popen=popen, log_path=log_path)
    try:
        wait_http(f"{server.url}/health", server, timeout=90)
        yield server
    finally:
        server.stop()


def register_three_versions(url: str, folder: Path) -> tuple[str, MlflowClient]:
    """A registered model with versions 1, 2 and 3, each from a run's logged files; champion -> 3."""
    name = f"support-bot-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    client.create_registered_model(name)
    for number in (1, 2, 3):
        run = client.create_run(experiment_id="0", run_name=f"{name}-train-{number}")
        weights = folder / f"{name}-weights-{number}.txt"
        weights.write_text(f"support-bot weights, version {number}\n")
        client.log_artifact(run.info.run_id, str(weights), artifact_path="model")
        client.set_terminated(run.info.run_id)
        client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", "3")
    return name, client


def champion(client: MlflowClient, name: str) -> str:
    return client.get_model_version_by_alias(name, "champion").version


def registry_deps(url: str, name: str, home: Path) -> tuple[ActivityDeps, MlflowTarget]:
    config = MlflowTarget.Config(tracking_uri=url, alias="champion", registered_models={"support-bot": name})
    registry = MlflowTarget.from_config(config, name="registry", base=home, env={})
    settings = Settings(home=home)
    return ActivityDeps(settings=settings, targets=TargetRegistry(settings, extra={"registry": registry})), registry


async def test_rollback_moves_the_alias_back_and_restore_puts_it_forward(mlflow_server: MlflowServer, tmp_path: Path):
    name, client = await asyncio.to_thread(register_three_versions, mlflow_server.url, tmp_path)
    deps, registry = registry_deps(mlflow_server.url, name, tmp_path / "home")
    rollback = ApplyInput(
        incident_id="inc-mlflow-1",
        occurrence="inc-mlflow-1",
        stage="rollback",
        index=0,
        target=TargetRef(adapter="registry", model="support-bot", version="3"),
        action=ROLLBACK,
    )
    environment = ActivityEnvironment()

    applied = await environment.run(RollbackActivities(deps).apply_rollback, rollback)
    assert await asyncio.to_thread(champion, client, name) == "2"
    bad = await asyncio.to_thread(client.get_model_version, name, "3")
    assert bad.tags["stanch.incident"] == "inc-mlflow-1" and bad.tags["stanch.status"] == "rolled_back"
    assert applied.result["version"] == "2" and applied.result["bad_version"] == "3" and applied.reversible

    before_retry = await registry.state("support-bot")
    again = await environment.run(RollbackActivities(deps).apply_rollback, rollback)
    assert again.result == applied.result and again.inverse == applied.inverse
    assert await registry.state("support-bot") == before_retry, "a repeated key changes nothing in the registry"
    assert await asyncio.to_thread(champion, client, name) == "2", "and does not roll back a second version"

    undone = await environment.run(RestoreActivities(deps).undo_action, UndoInput(incident_id="inc-mlflow-1", applied=applied))
    assert undone.undone_at is not None
    assert await asyncio.to_thread(champion, client, name) == "3"
    restored = await asyncio.to_thread(client.get_model_version, name, "3")
    assert restored.tags["stanch.status"] == "restored" and restored.tags["stanch.incident"] == "inc-mlflow-1", (
        "the incident tag stays for the audit"
    )
    await environment.run(RestoreActivities(deps).undo_action, UndoInput(incident_id="inc-mlflow-1", applied=applied))

    state = await registry.state("support-bot")
    assert state["served_version"] == "3" and state["aliases"] == {"champion": "3"}
    assert [(m["from"], m["to"], m["by"], m["incident"]) for m in state["alias_history"]["champion"]] == [
        ("3", "2", "rollback_alias", "inc-mlflow-1"),
        ("2", "3", "undo", "inc-mlflow-1"),
    ], "the history records each move once, even though restore ran twice"
    assert [v["version"] for v in state["versions"]] == ["1", "2", "3"] and state["versions"][0]["status"] == "READY"
    assert {entry["key"] for entry in state["stanch_ledger"]} == {applied.idempotency_key}


async def test_previous_good_version_skips_versions_already_rolled_back(mlflow_server: MlflowServer, tmp_path: Path):
    name, client = await asyncio.to_thread(register_three_versions, mlflow_server.url, tmp_path)
    await asyncio.to_thread(client.set_model_version_tag, name, "2", "stanch.status", "rolled_back")  # an earlier incident's verdict
    _, registry = registry_deps(mlflow_server.url, name, tmp_path / "home")
    outcome = await registry.apply("support-bot", ActionSpec(kind="rollback_alias"), "inc-2/rollback/0/registry:support-bot", "inc-2")
    assert outcome.result["version"] == "1" and await asyncio.to_thread(champion, client, name) == "1"

    explicit = ActionSpec(kind="rollback_alias", params={"to_version": 3, "registered_model": name})
    outcome = await registry.apply("anything", explicit, "inc-3/rollback/0/registry:support-bot", "inc-3")
    assert outcome.result == {**outcome.result, "version": "3", "previous_version": "1"}


async def test_refusals_name_the_model_and_alias_and_say_whether_to_retry(mlflow_server: MlflowServer, tmp_path: Path):
    name, client = await asyncio.to_thread(register_three_versions, mlflow_server.url, tmp_path)
    _, registry = registry_deps(mlflow_server.url, name, tmp_path / "home")

    with pytest.raises(TargetError, match="registered model 'no-such-model'.*RESOURCE_DOES_NOT_EXIST") as unknown:
        await registry.state("no-such-model")
    assert not unknown.value.retryable

    wrong_bad = ActionSpec(kind="rollback_alias", params={"bad_version": "2"})
    with pytest.raises(TargetError, match="alias 'champion' of '.*' points at version 3, not the reported bad version 2") as mismatch:
        await registry.apply("support-bot", wrong_bad, "inc-4/rollback/0", "inc-4")
    assert not mismatch.value.retryable

    applied = await registry.apply("support-bot", ActionSpec(kind="rollback_alias"), "inc-5/rollback/0", "inc-5")
    await asyncio.to_thread(client.set_registered_model_alias, name, "champion", "1")  # a human moved it meanwhile
    record = AppliedAction(
        kind="rollback_alias",
        stage="rollback",
        index=0,
        target=TargetRef(adapter="registry", model="support-bot"),
        idempotency_key="inc-5/rollback/0",
        result=applied.result,
        inverse=applied.inverse,
    )
    with pytest.raises(TargetError, match="now points at version 1, not 2 where the rollback left it") as moved:
        await registry.undo(record, "inc-5/rollback/0/undo")
    assert not moved.value.retryable and await asyncio.to_thread(champion, client, name) == "1", "Stanch leaves the human's choice alone"

    unreachable = MlflowTarget(MlflowTarget.Config(tracking_uri=f"http://127.0.0.1:{free_port()}"), name="registry")
    with pytest.raises(TargetError, match="unreachable") as down:
        await unreachable.state("support-bot")
    assert down.value.retryable


class ServingGateway:
    """The incident's main target, which serves the model; the registry is only where the
    rollback step acts (`target: registry`)."""

    kind = "gateway"

    async def state(self, model: str) -> dict:
        return {"model": model, "served_version": "3"}


async def test_an_incident_rolls_back_on_mlflow_and_restore_puts_the_alias_forward(mlflow_server: MlflowServer, tmp_path: Path):
    """The whole IncidentWorkflow (time-skipping server) with the real rollback, restore and
    evidence activities; the runbook's rollback step names the MLflow target. Stand-ins answer
    for confirm, grading, review, notify."""
    assertions.trust(assertions.parse_keys(TEST_DECISION_KEYS))
    name, client = await asyncio.to_thread(register_three_versions, mlflow_server.url, tmp_path)
    deps, registry = registry_deps(mlflow_server.url, name, tmp_path / "home")
    deps.targets = TargetRegistry(deps.settings, extra={"registry": registry, "gateway": ServingGateway()})

    step = ROLLBACK.model_copy(update={"target": "registry"})
    input = incident_input(containment=[], rollback=[step], hotfix=None, severity=SeverityRules(default=Severity.medium))
    medium = input.runbook.policy[Severity.medium]
    one_approver = StageGate(mode="approve", approve=Approval(count=1, roles=["oncall", "safety"]))
    policy = {**input.runbook.policy, Severity.medium: medium.model_copy(update={"stages": {**medium.stages, "restore": one_approver}})}
    input = input.model_copy(
        update={
            "runbook": input.runbook.model_copy(update={"policy": policy}),
            "target": TargetRef(adapter="gateway", model="support-bot", version="3"),
        }
    )

    real = {
        "apply_rollback": RollbackActivities(deps).apply_rollback,
        "lift_action": RestoreActivities(deps).undo_action,
        "snapshot_evidence": EvidenceActivities(deps).snapshot_evidence,
    }
    activities = [real.get(stand_in.__name__, stand_in) for stand_in in stand_ins(Script(detectors=[]))]
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=installed_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    try:
        task_queue = f"tq-{uuid.uuid4()}"
        async with Worker(environment.client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=activities):
            handle = await environment.client.start_workflow(
                IncidentWorkflow.run,
                input,
                id=input.incident_id,
                task_queue=task_queue,
                start_signal="add_signal",
                start_signal_args=[alert(model_version="3")],
            )
            await until(handle, waiting_on("rollback"))
            await approve(handle, "rollback", "alice", ["oncall"])
            await until(handle, waiting_on("restore"))
            assert await asyncio.to_thread(champion, client, name) == "2", "rolled back while the incident is open"
            assert (await asyncio.to_thread(client.get_model_version, name, "3")).tags["stanch.incident"] == input.incident_id
            await approve(handle, "restore", "sam", ["safety"])
            final = await handle.result()
    finally:
        await environment.shutdown()

    assert final.status == IncidentStatus.closed
    assert await asyncio.to_thread(champion, client, name) == "3"
    assert final.evidence and final.evidence.summary["served_version"] == "3", "evidence was taken before the first change"
    registry_before = json.loads(await deps.artefacts.get(final.evidence.location))["step_target_states"]["registry"]
    assert registry_before["aliases"]["champion"] == "3", "the registry's state is evidence too, read before the rollback"
    [rolled_back] = final.actions
    assert rolled_back.kind == "rollback_alias" and rolled_back.result["version"] == "2" and rolled_back.undone_at is not None
    assert rolled_back.target.adapter == "registry", "restore undid it on the registry, where it was applied"
    history = (await registry.state("support-bot"))["alias_history"]["champion"]
    assert [(m["from"], m["to"], m["incident"]) for m in history] == [("3", "2", input.incident_id), ("2", "3", input.incident_id)]


def test_plan_lists_the_rest_calls_with_their_undo_and_calls_nothing():
    registry = MlflowTarget(MlflowTarget.Config(tracking_uri=f"http://127.0.0.1:{free_port()}", alias="prod"), name="registry")
    calls = registry.plan("support-bot", ROLLBACK.model_copy(update={"params": {"bad_version": "3"}}), "inc-1/rollback/0")
    assert {call.adapter for call in calls} == {"mlflow"} and {call.target for call in calls} == {"registry"}
    [move] = [call for call in calls if call.url.endswith("/api/2.0/mlflow/registered-models/alias")]
    assert move.method == "POST" and move.body["alias"] == "prod" and move.body["version"].startswith("<the highest READY version below 3")
    assert move.undo[0].body == {"name": "support-bot", "alias": "prod", "version": "3"}
    assert any("model-versions/search" in call.url for call in calls), "the previous good version is looked up"


async def test_the_token_is_read_at_call_time_and_sent_only_as_a_header(tmp_path: Path):
    seen: list[httpx.Request] = []

    def fake_mlflow(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("authorization") != "Bearer s3cret-token":
            return httpx.Response(401, json={"error_code": "UNAUTHENTICATED", "message": "who are you"})
        return httpx.Response(200, json={"registered_model": {"name": "support-bot", "aliases": [{"alias": "champion", "version": "3"}]}})

    (tmp_path / "mlflow-token").write_text("s3cret-token\n")
    config = MlflowTarget.Config(tracking_uri="http://mlflow.internal:5000", token_file=Path("mlflow-token"))
    registry = MlflowTarget(config, name="registry", base=tmp_path, env={}, transport=httpx.MockTransport(fake_mlflow))
    state = await registry.state("support-bot")
    assert state["served_version"] == "3" and "s3cret" not in repr(state)
    assert seen and all(request.url.path.startswith("/api/2.0/mlflow/") for request in seen)

    config = MlflowTarget.Config(tracking_uri="http://mlflow.internal:5000", token_env="MLFLOW_TOKEN")
    unset = MlflowTarget(config, name="registry", env={}, transport=httpx.MockTransport(fake_mlflow))
    with pytest.raises(TargetError, match="token_env: environment variable MLFLOW_TOKEN is not set") as missing:
        await unset.state("support-bot")
    assert not missing.value.retryable
    wrong = MlflowTarget(config, name="registry", env={"MLFLOW_TOKEN": "stale"}, transport=httpx.MockTransport(fake_mlflow))
    with pytest.raises(TargetError, match="credentials refused") as refused:
        await wrong.state("support-bot")
    assert not refused.value.retryable and "stale" not in str(refused.value)


async def test_a_retry_after_a_crash_mid_rollback_finishes_the_same_plan(mlflow_server: MlflowServer, tmp_path: Path, monkeypatch):
    """The alias moved, then the worker died before recording the result: the retry must not
    take the new alias position for the bad one and roll back a second version."""
    name, client = await asyncio.to_thread(register_three_versions, mlflow_server.url, tmp_path)
    _, registry = registry_deps(mlflow_server.url, name, tmp_path / "home")

    async def worker_dies(*args, **kwargs):
        raise TargetError("worker lost mid-rollback")

    with monkeypatch.context() as crash:
        crash.setattr(registry, "_record_move", worker_dies)
        with pytest.raises(TargetError, match="worker lost"):
            await registry.apply("support-bot", ActionSpec(kind="rollback_alias"), "inc-6/rollback/0", "inc-6")
    assert await asyncio.to_thread(champion, client, name) == "2", "the alias had moved before the crash"

    outcome = await registry.apply("support-bot", ActionSpec(kind="rollback_alias"), "inc-6/rollback/0", "inc-6")
    assert not outcome.replayed and (outcome.result["previous_version"], outcome.result["version"]) == ("3", "2")
    assert await asyncio.to_thread(champion, client, name) == "2"
    assert (await asyncio.to_thread(client.get_model_version, name, "2")).tags.get("stanch.status") is None, "version 2 was never blamed"


async def test_a_fine_tuned_model_becomes_a_new_version_once_described_by_its_run(mlflow_server: MlflowServer, tmp_path: Path):
    """The fine-tune's registration on a real server: the version's source lies in a run's
    artifacts (a JSON description MLflow's client downloads), Stanch's tags, once per key, no alias moved."""
    name, client = await asyncio.to_thread(register_three_versions, mlflow_server.url, tmp_path)
    _, registry = registry_deps(mlflow_server.url, name, tmp_path / "home")
    fine_tuned = FineTunedModel(
        incident_id="inc-ft-1",
        fine_tuned_model="ft:support-bot-v3:stanch:abc123",
        base_url="http://bot:sk-secret@127.0.0.1:8400/v1",
        job_id="ftjob-1",
        base_version="3",
        gateway_version="4",
    )
    key = "inc-ft-1/hotfix/0/gateway:support-bot/registry-version"
    first = await registry.register_fine_tune("support-bot", fine_tuned, key)
    again = await registry.register_fine_tune("support-bot", fine_tuned, key)

    assert first["registry_version"] == again["registry_version"] == "4"
    assert [v.version for v in await asyncio.to_thread(client.search_model_versions, f"name='{name}'")] == ["4", "3", "2", "1"]
    version = await asyncio.to_thread(client.get_model_version, name, "4")
    assert version.tags["stanch.incident"] == "inc-ft-1" and version.tags["stanch.gateway_version"] == "4"
    assert version.tags["stanch.fine_tuned_model"] == "ft:support-bot-v3:stanch:abc123"
    assert version.run_id, "a version created from a run's artifacts names its run"
    folder = await asyncio.to_thread(client.download_artifacts, version.run_id, "stanch-fine-tune", str(tmp_path / "download"))
    described = json.loads((Path(folder) / "fine_tune.json").read_text())
    assert described["job_id"] == "ftjob-1" and described["base_url"] == "http://127.0.0.1:8400/v1"
    assert await asyncio.to_thread(champion, client, name) == "3", "no alias moves"
