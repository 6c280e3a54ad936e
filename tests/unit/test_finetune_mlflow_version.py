"""A fine-tune whose step names a registry (`params.registry`, an `mlflow` target) becomes a new
version of the model's registered model too: a run holding a JSON description of the fine-tuned
model (never a credential), the version created from it with Stanch's tags, once per key even
when a retry follows a lost answer, and no alias moved. The MLflow REST API is a small fake
served on loopback, checking what a real server checks (the source lies in the run's artifacts)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.hotfix as hotfix
from activities.hotfix import HotfixActivities
from stanch.config.settings import Settings
from stanch.targets.mlflow import MlflowTarget
from stanch.targets.registry import TargetRegistry
from stanch.targets.trainer import OpenAITrainer
from stanch.temporal.activity_deps import ActivityDeps
from tests.unit.fake_trainer import FakeTrainer, served, serving
from tests.unit.test_hotfix_finetune import REFUSAL, FakeGateway, finetune_input

REGISTERED = "support-bot-prod"
SECRET = "sk-upstream-secret-123"


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status_code=status)


@dataclass
class FakeMlflow:
    """The registry and tracking calls a fine-tune's registration makes, kept for the tests to read."""

    artifact_root: str = "mlflow-artifacts:"
    loses_first_version_answer: bool = False  # create the version, then answer 503 once: the answer was lost
    experiments: dict[str, str] = field(default_factory=dict)  # name -> id
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=lambda: {"champion": "2"})
    url: str = ""

    def __post_init__(self) -> None:
        self.versions = [{"name": REGISTERED, "version": str(n), "status": "READY", "tags": []} for n in (1, 2)]

    def app(self) -> FastAPI:
        app = FastAPI()
        api = "/api/2.0/mlflow"

        @app.get(f"{api}/registered-models/get")
        async def get_model(name: str) -> Any:
            if name != REGISTERED:
                return error(404, "RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={name} not found")
            aliases = [{"alias": a, "version": v} for a, v in self.aliases.items()]
            return {"registered_model": {"name": name, "aliases": aliases, "tags": []}}

        @app.get(f"{api}/model-versions/search")
        async def search_versions() -> Any:
            return {"model_versions": self.versions}

        @app.get(f"{api}/experiments/get-by-name")
        async def experiment_by_name(experiment_name: str) -> Any:
            if experiment_name not in self.experiments:
                return error(404, "RESOURCE_DOES_NOT_EXIST", f"Could not find experiment with name {experiment_name}")
            return {"experiment": {"experiment_id": self.experiments[experiment_name], "name": experiment_name}}

        @app.post(f"{api}/experiments/create")
        async def create_experiment(request: Request) -> Any:
            name = (await request.json())["name"]
            self.experiments[name] = str(len(self.experiments) + 1)
            return {"experiment_id": self.experiments[name]}

        @app.post(f"{api}/runs/create")
        async def create_run(request: Request) -> Any:
            body = await request.json()
            run_id = f"run{len(self.runs) + 1}"
            info = {
                "run_id": run_id,
                "experiment_id": body["experiment_id"],
                "status": "RUNNING",
                "artifact_uri": f"{self.artifact_root}/{body['experiment_id']}/{run_id}/artifacts",
            }
            self.runs[run_id] = {"info": info, "data": {"tags": body.get("tags", [])}}
            return {"run": self.runs[run_id]}

        @app.post(f"{api}/runs/search")
        async def search_runs(request: Request) -> Any:
            wanted = (await request.json())["filter"].rpartition("= ")[2].strip("'")
            return {"runs": [run for run in self.runs.values() if wanted in {t["value"] for t in run["data"]["tags"]}]}

        @app.post(f"{api}/runs/update")
        async def update_run(request: Request) -> Any:
            body = await request.json()
            self.runs[body["run_id"]]["info"]["status"] = body["status"]
            return {"run_info": self.runs[body["run_id"]]["info"]}

        @app.put("/api/2.0/mlflow-artifacts/artifacts/{path:path}")
        async def upload(path: str, request: Request) -> Any:
            self.artifacts[path] = await request.body()
            return {}

        @app.post(f"{api}/model-versions/create")
        async def create_version(request: Request) -> Any:
            body = await request.json()
            run = self.runs.get(body.get("run_id", ""))
            if run is None or not body["source"].startswith(run["info"]["artifact_uri"]):
                return error(400, "INVALID_PARAMETER_VALUE", "the source must lie in the run's artifacts")
            version = {**body, "version": str(len(self.versions) + 1), "status": "READY"}
            self.versions.append(version)
            if self.loses_first_version_answer:
                self.loses_first_version_answer = False
                return error(503, "TEMPORARILY_UNAVAILABLE", "the answer was lost")
            return {"model_version": version}

        return app

    def version(self, number: str) -> dict[str, Any]:
        return next(v for v in self.versions if v["version"] == number)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hotfix, "JOB_POLL_SECONDS", 0.01)
    monkeypatch.setattr(hotfix, "JOB_POLL_MAX_SECONDS", 0.02)


def activities_for(gateway: FakeGateway, trainer_url: str, mlflow_url: str, tmp_path: Path) -> HotfixActivities:
    registry = MlflowTarget(MlflowTarget.Config(tracking_uri=mlflow_url, registered_models={"support-bot": REGISTERED}), name="registry")
    extra: dict[str, Any] = {"gateway": gateway, "registry": registry, "trainer": OpenAITrainer(OpenAITrainer.Config(base_url=trainer_url))}
    settings = Settings(home=tmp_path)
    return HotfixActivities(ActivityDeps(settings=settings, targets=TargetRegistry(settings, extra, env={})))


def tags(version: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in version.get("tags", [])}


async def test_the_fine_tuned_model_becomes_a_new_mlflow_version_from_a_run_describing_it(tmp_path: Path) -> None:
    gateway, mlflow = FakeGateway(), FakeMlflow()
    gateway.versions[1]["base_url"] = f"http://bot:{SECRET}@127.0.0.1:8400/v1?api-key={SECRET}"
    async with serving(FakeTrainer()) as trainer, served(mlflow.app()) as root:
        acts = activities_for(gateway, trainer.url, root, tmp_path)
        applied = await ActivityEnvironment().run(acts.apply_hotfix, finetune_input({"answer": REFUSAL, "registry": "registry"}))
    (job,) = trainer.jobs.values()

    assert applied.result["registry_version"] == "3" and applied.result["registered_model"] == REGISTERED
    assert applied.result["version"] == "3" and gateway.release == "3", "the gateway still registers and deploys it"
    created = mlflow.version("3")
    assert tags(created) == {
        "stanch.incident": "inc-7",
        "stanch.fine_tuned_model": job["fine_tuned_model"],
        "stanch.gateway_version": "3",
        "stanch.finetune_key": tags(created)["stanch.finetune_key"],
    }
    (run,) = mlflow.runs.values()
    assert run["info"]["status"] == "FINISHED" and created["run_id"] == run["info"]["run_id"]
    (path,) = mlflow.artifacts
    assert created["source"].startswith(run["info"]["artifact_uri"]) and path.endswith("fine_tune.json")
    described = json.loads(mlflow.artifacts[path])
    assert described["fine_tuned_model"] == job["fine_tuned_model"] and described["job_id"] == job["id"]
    assert described["incident_id"] == "inc-7" and described["base_version"] == "2" and described["base_model"] == "support-bot-v2"
    assert described["base_url"] == "http://127.0.0.1:8400/v1"
    assert SECRET not in mlflow.artifacts[path].decode(), "no credential reaches the registry"
    assert mlflow.aliases == {"champion": "2"}, "serving it from the registry is a step of its own"


async def test_a_retry_after_a_lost_answer_finds_the_version_it_created_and_creates_none_twice(tmp_path: Path) -> None:
    gateway, mlflow = FakeGateway(), FakeMlflow(loses_first_version_answer=True)
    step = finetune_input({"answer": REFUSAL, "registry": "registry"})
    async with serving(FakeTrainer()) as trainer, served(mlflow.app()) as root:
        acts = activities_for(gateway, trainer.url, root, tmp_path)
        with pytest.raises(ApplicationError) as lost:
            await ActivityEnvironment().run(acts.apply_hotfix, step)
        assert not lost.value.non_retryable, "a 503 is for the retry policy"
        retried = await ActivityEnvironment().run(acts.apply_hotfix, step)
        again = await ActivityEnvironment().run(acts.apply_hotfix, step)

    assert [v["version"] for v in mlflow.versions] == ["1", "2", "3"] and len(mlflow.runs) == 1
    assert retried.result["registry_version"] == again.result["registry_version"] == "3"
    assert len(trainer.jobs) == 1 and gateway.kinds() == ["register_version", "deploy_version"]


async def test_a_registry_that_is_not_an_mlflow_target_is_refused_before_any_training(tmp_path: Path) -> None:
    mlflow = FakeMlflow()
    async with serving(FakeTrainer()) as trainer, served(mlflow.app()) as root:
        acts = activities_for(FakeGateway(), trainer.url, root, tmp_path)
        for name, words in (("registy", "no registry named 'registy'"), ("gateway", "target gateway is not an MLflow registry")):
            with pytest.raises(ApplicationError) as refused:
                await ActivityEnvironment().run(acts.apply_hotfix, finetune_input({"answer": REFUSAL, "registry": name}))
            assert words in str(refused.value) and refused.value.non_retryable
    assert trainer.jobs == {} and mlflow.runs == {}


async def test_a_run_whose_artifacts_the_tracking_server_does_not_serve_is_refused_naming_where_they_live(tmp_path: Path) -> None:
    mlflow = FakeMlflow(artifact_root="s3://team-bucket/mlruns")
    async with serving(FakeTrainer()) as trainer, served(mlflow.app()) as root:
        acts = activities_for(FakeGateway(), trainer.url, root, tmp_path)
        with pytest.raises(ApplicationError) as refused:
            await ActivityEnvironment().run(acts.apply_hotfix, finetune_input({"answer": REFUSAL, "registry": "registry"}))
    assert "s3://team-bucket/mlruns" in str(refused.value) and refused.value.non_retryable
    assert [v["version"] for v in mlflow.versions] == ["1", "2"]
