"""The ways teams call the regression gate (deploy/gate/): the CI step run by bash against the
real API, the Argo Rollouts AnalysisTemplate checked against Argo's own types, and the check
before an MLflow alias move."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from stanch.api.app import create_app
from stanch.config.settings import Settings
from stanch.gate.models import GateRequest
from stanch.stores.regression import RegressionSuite, case_id
from stanch.trust.responders import ResponderAuth, RespondersFile, StaticToken, token_sha256
from tests.openai_stub import Stub
from tests.unit.fake_trainer import served
from tests.unit.test_api_alerts import NoCatalog
from tests.unit.test_gate import KEY_CASE, gateway, settings, stub, suite  # noqa: F401 - fixtures
from tests.unit.test_gateway import MODEL

GATE = Path(__file__).resolve().parents[2] / "deploy" / "gate"
TOKEN = "stk_ci_gate_deploy"

# The fields of Argo Rollouts' types (pkg/apis/rollouts/v1alpha1/analysis_types.go): Metric,
# WebMetric, WebMetricHeader, Argument, ValueFrom, SecretKeyRef.
ARGO_METRIC = {
    "name",
    "interval",
    "initialDelay",
    "count",
    "successCondition",
    "failureCondition",
    "failureLimit",
    "inconclusiveLimit",
    "consecutiveErrorLimit",
    "provider",
}
ARGO_WEB = {"method", "url", "headers", "body", "timeoutSeconds", "jsonPath", "insecure", "jsonBody"}
ARGO_ARGUMENT = {"name", "value", "valueFrom"}


@pytest.fixture
async def api(tmp_path: Path, stub: Stub, suite: RegressionSuite):  # noqa: F811 - fixtures
    """The real API on a loopback port, its gateway real too (the stub behind it), a `gate` token."""
    async with gateway(tmp_path, stub) as gateway_url:
        settings = Settings(home=tmp_path, runbooks_dir=tmp_path, gateway_url=gateway_url)
        responders = ResponderAuth(RespondersFile(tokens=[StaticToken(user="ci", roles=["gate"], token_sha256=token_sha256(TOKEN))]))
        app = create_app(settings, catalog=NoCatalog(), responders=responders, insecure_dev=True)  # type: ignore[arg-type]
        async with served(app) as url:
            yield url


def gate_step() -> str:
    workflow = yaml.safe_load((GATE / "github-actions.yaml").read_text())
    [step] = [step for step in workflow["jobs"]["gate"]["steps"] if "run" in step]
    return str(step["run"])


async def run_step(url: str, candidate: str, cwd: Path) -> tuple[int, str]:
    for tool in ("curl", "jq"):
        assert shutil.which(tool), f"the CI step runs {tool}: install it (.ci/run installs curl and jq)"
    env = {"PATH": "/usr/bin:/bin", "STANCH_API_URL": url, "GATE_TOKEN": TOKEN, "MODEL": MODEL, "CANDIDATE": candidate}
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", gate_step(), env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_the_ci_step_fails_the_job_naming_the_regressing_case_and_passes_the_good_version(api: str, tmp_path: Path) -> None:
    failed, said = await run_step(api, "2", tmp_path)
    assert failed == 1, said
    assert f"::error::case {case_id(MODEL, KEY_CASE)} (incident INC-KEY) regressed" in said
    passed, said = await run_step(api, "1", tmp_path)
    assert passed == 0 and said.startswith("pass:"), said
    assert json.loads((tmp_path / "verdict.json").read_text())["verdict"] == "pass", "the verdict is kept for the artifact"


def test_the_workflow_parses_and_its_trigger_key_stays_a_string() -> None:
    workflow = yaml.safe_load((GATE / "github-actions.yaml").read_text())
    assert "on" in workflow and True not in workflow, "an unquoted `on:` is YAML 1.1's true"
    assert workflow["jobs"]["gate"]["steps"][0]["env"]["GATE_TOKEN"] == "${{ secrets.GATE_TOKEN }}"


def test_the_analysis_template_uses_only_argo_fields_and_reads_the_verdict_with_the_secret_token() -> None:
    [template] = list(yaml.safe_load_all((GATE / "analysis-template.yaml").read_text()))
    assert (template["apiVersion"], template["kind"]) == ("argoproj.io/v1alpha1", "AnalysisTemplate")
    assert set(template["spec"]) <= {"metrics", "args", "dryRun", "measurementRetention"}
    args = {arg["name"]: arg for arg in template["spec"]["args"]}
    assert all(set(arg) <= ARGO_ARGUMENT for arg in args.values())
    assert args["gate-token"]["valueFrom"] == {"secretKeyRef": {"name": "stanch-gate", "key": "token"}}
    [metric] = template["spec"]["metrics"]
    assert set(metric) <= ARGO_METRIC and set(metric["provider"]) == {"web"}
    web = metric["provider"]["web"]
    assert set(web) <= ARGO_WEB and all(set(header) == {"key", "value"} for header in web["headers"])
    assert (metric["successCondition"], metric["failureCondition"], web["jsonPath"]) == (
        'result == "pass"',
        'result == "fail"',
        "{$.verdict}",
    )
    assert web["method"] == "POST" and web["url"] == "http://stanch-api.stanch.svc:8200/v1/gate", "the API Service's name and port"
    assert {"key": "Authorization", "value": "Bearer {{args.gate-token}}"} in web["headers"]
    # The body Argo sends, its arguments filled in, is a request the API takes.
    body = web["body"].replace("{{args.model}}", MODEL).replace("{{args.candidate}}", "3")
    assert GateRequest.model_validate_json(body).candidate == "3"


def mlflow_script() -> Any:
    spec = importlib.util.spec_from_file_location("mlflow_alias_gate", GATE / "mlflow_alias_gate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeRegistry:
    """Records what the script asks of MlflowClient."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def set_model_version_tag(self, *args: str) -> None:
        self.calls.append(("tag", args))

    def set_registered_model_alias(self, *args: str) -> None:
        self.calls.append(("alias", args))


async def test_the_mlflow_alias_moves_only_after_the_gate_passed_the_version(api: str) -> None:
    script = mlflow_script()
    leaking = await asyncio.to_thread(script.gate_verdict, api, TOKEN, MODEL, "2")
    good = await asyncio.to_thread(script.gate_verdict, api, TOKEN, MODEL, "1")

    kept, moved, said = FakeRegistry(), FakeRegistry(), io.StringIO()
    assert script.move_alias_if_gate_passes(kept, MODEL, "champion", "2", leaking, out=said) == 1
    assert kept.calls == [("tag", (MODEL, "2", "stanch.gate", "fail"))], "the alias stays where it was"
    assert "(incident INC-KEY)" in said.getvalue() and "NOT moved" in said.getvalue()
    assert script.move_alias_if_gate_passes(moved, MODEL, "champion", "1", good, out=io.StringIO()) == 0
    assert moved.calls[-1] == ("alias", (MODEL, "champion", "1"))
    with pytest.raises(RuntimeError, match="could not run"):
        await asyncio.to_thread(script.gate_verdict, api, "stk_not_a_token", MODEL, "1")
