"""A guardrail config as a gate candidate: the gateway applies the candidate's patterns to the
bare answers (only for Stanch's admin token, only on a version asked for bare), the gate judges
what users would get under them, and a bad config is refused naming the pattern or the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from stanch.api.app import create_app as create_api
from stanch.cli.main import app as cli
from stanch.config.settings import Settings
from stanch.gate.models import GateRequest
from stanch.gate.run import GateCannotRun, candidate_endpoint, run_gate
from stanch.probe.endpoint import ChatEndpoint
from stanch.stores.regression import RegressionSuite
from stanch.targets.registry import TargetRegistry
from tests.openai_stub import Stub
from tests.unit.test_api_alerts import NoCatalog
from tests.unit.test_gate import gateway, settings, stub, suite  # noqa: F401 - fixtures
from tests.unit.test_gateway import ASK, MODEL, SECRET, content, running_gateway, streamed, upstreams

TOKEN = "gw-admin-guardrails"
KEY_GUARDRAIL = r"sk-live-\w+"


def test_a_guardrail_config_is_validated_and_recorded_by_sha256_and_count() -> None:
    request = GateRequest(model=MODEL, candidate="2", guardrails=[KEY_GUARDRAIL, r"\d{3}-\d{4}"])
    assert (
        request.guardrails_sha256 == hashlib.sha256(json.dumps([KEY_GUARDRAIL, r"\d{3}-\d{4}"], separators=(",", ":")).encode()).hexdigest()
    )
    assert GateRequest(model=MODEL, candidate="2").guardrails_sha256 is None

    with pytest.raises(ValidationError, match=r"pattern 2 'sk-\(' does not compile"):
        GateRequest(model=MODEL, candidate="2", guardrails=[KEY_GUARDRAIL, "sk-("])
    with pytest.raises(ValidationError, match="pattern 1 must be 1 to 500 characters"):
        GateRequest(model=MODEL, candidate="2", guardrails=[""])
    with pytest.raises(ValidationError, match="guardrails"):
        GateRequest(model=MODEL, candidate="2", guardrails=[f"a{n}" for n in range(51)])
    with pytest.raises(ValidationError, match="more than 8000 characters as JSON"):
        GateRequest(model=MODEL, candidate="2", guardrails=["x" * 400] * 25)


async def test_the_gateway_applies_candidate_guardrails_only_to_a_bare_version_asked_with_the_admin_token(
    tmp_path: Path, stub: Stub
) -> None:
    async with running_gateway(tmp_path / "gateway.db", stub, upstreams(), admin_token=TOKEN) as gw:

        async def ask(headers: dict[str, str], **extra: Any) -> httpx.Response:
            return await gw.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **extra}, headers=headers)

        bare = {"x-stanch-version": "2", "x-stanch-bare": "1", "x-stanch-admin-token": TOKEN}
        candidate = {**bare, "x-stanch-guardrails": json.dumps([KEY_GUARDRAIL])}

        assert SECRET in content(await ask(bare)), "bare, without a candidate config: the version as its upstream answers"
        redacted = content(await ask(candidate))
        assert SECRET not in redacted and "[redacted]" in redacted
        text, _ = streamed((await ask(candidate, stream=True)).text)
        assert SECRET not in text and "[redacted]" in text, "a streamed answer is redacted too"

        # Nobody but Stanch changes what is redacted: without the token, refused before any model.
        asked_before = len(stub.received)
        without_token = await ask({**candidate, "x-stanch-admin-token": "not-it"})
        assert without_token.status_code == 401 and without_token.json()["error"]["code"] == "admin_token_required"
        user = await ask({"x-stanch-guardrails": json.dumps(["I can"])})
        assert user.status_code == 401 and "x-stanch-guardrails needs the gateway's admin token" in user.json()["error"]["message"]
        assert len(stub.received) == asked_before

        not_bare = await ask(_without(candidate, "x-stanch-bare"))
        assert not_bare.status_code == 400 and "only to a version asked for bare" in not_bare.json()["error"]["message"]
        bad = await ask({**candidate, "x-stanch-guardrails": json.dumps([KEY_GUARDRAIL, "sk-("])})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_guardrails"
        assert "pattern 2 'sk-(' does not compile" in bad.json()["error"]["message"]
        not_json = await ask({**candidate, "x-stanch-guardrails": "sk-live"})
        assert not_json.status_code == 400 and "JSON list of regex patterns" in not_json.json()["error"]["message"]
        assert len(stub.received) == asked_before


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key != name}


async def test_the_leaking_version_fails_bare_and_passes_under_a_guardrail_config_that_redacts_the_key(
    tmp_path: Path,
    stub: Stub,  # noqa: F811 - fixture
    suite: RegressionSuite,  # noqa: F811 - fixture
) -> None:
    async with gateway(tmp_path, stub) as url:
        targets = TargetRegistry(Settings(home=tmp_path, runbooks_dir=tmp_path, gateway_url=url), env={})
        bare = await run_gate(GateRequest(model=MODEL, candidate="2", samples=2), suite=suite, targets=targets)
        guarded = await run_gate(
            GateRequest(model=MODEL, candidate="2", samples=2, guardrails=[KEY_GUARDRAIL]), suite=suite, targets=targets
        )

    assert (bare.verdict, bare.guardrails_sha256, bare.guardrails_count) == ("fail", None, None)
    assert (guarded.verdict, guarded.regressions, guarded.guardrails_count) == ("pass", 0, 1)
    assert guarded.guardrails_sha256 == GateRequest(model=MODEL, candidate="2", guardrails=[KEY_GUARDRAIL]).guardrails_sha256


def test_only_the_gateway_applies_a_guardrail_config() -> None:
    class ServingUrl:  # a model's own serving URL: no gateway in between to redact anything
        def chat_endpoint(self, model: str, version: str | None = None) -> ChatEndpoint:
            return ChatEndpoint(base_url="http://127.0.0.1:9/v1", model=model)

    class Targets:
        def get(self, ref: Any) -> ServingUrl:
            return ServingUrl()

    request = GateRequest(model=MODEL, candidate="2", target="vllm", guardrails=[KEY_GUARDRAIL])
    with pytest.raises(GateCannotRun, match="not the gateway") as refused:
        candidate_endpoint(Targets(), request)  # type: ignore[arg-type]
    assert not refused.value.retryable, "asking again cannot help: the API answers 422"
    assert candidate_endpoint(Targets(), request.model_copy(update={"guardrails": None})).model == MODEL  # type: ignore[arg-type]


def test_a_bad_guardrails_file_exits_2_naming_the_file_and_the_problem(
    tmp_path: Path,
    settings: Settings,  # noqa: F811 - fixture
    suite: RegressionSuite,  # noqa: F811 - fixture: cases to replay, so a good file reaches the gateway
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANCH_HOME", str(settings.home))
    monkeypatch.setenv("STANCH_RUNBOOKS", str(Path(__file__).resolve().parents[2] / "runbooks"))
    monkeypatch.setenv("STANCH_GATEWAY_URL", settings.gateway_url)
    runner = CliRunner()

    def gate_with(text: str | None) -> tuple[int, str, Path]:
        path = tmp_path / "guardrails.yaml"
        if text is not None:
            path.write_text(text)
        result = runner.invoke(cli, ["gate", "--model", MODEL, "--candidate", "2", "--guardrails-file", str(path)])
        return result.exit_code, " ".join(result.output.split()), path

    for text, problem in [
        (None, "No such file"),
        ("- 'sk-live-\\w+'\n- [unclosed\n", "is not YAML"),
        ("patterns: sk-live\n", "must hold a YAML (or JSON) list of regex patterns"),
        ("[]\n", "holds no pattern"),
        ("- 'sk-live-\\w+'\n- 'sk-('\n", "pattern 2 'sk-(' does not compile"),
    ]:
        code, output, path = gate_with(text)
        assert code == 2 and f"--guardrails-file {path}" in output and problem in output, output
    # A good file, in YAML or JSON, gets as far as asking the gateway (out of reach here: 2, named).
    code, output, _ = gate_with(json.dumps([KEY_GUARDRAIL]))
    assert code == 2 and "STANCH_GATEWAY_URL" in output and "guardrails-file" not in output


def test_the_api_takes_a_guardrail_config_and_refuses_one_that_does_not_compile(
    settings: Settings,  # noqa: F811 - fixture
    suite: RegressionSuite,  # noqa: F811 - fixture: cases to replay
) -> None:
    api = create_api(settings, catalog=NoCatalog(), insecure_dev=True)  # type: ignore[arg-type]
    with TestClient(api) as http:
        bad = http.post("/v1/gate", json={"model": MODEL, "candidate": "2", "guardrails": ["sk-("]})
        assert bad.status_code == 422 and "pattern 1 'sk-(' does not compile" in bad.text
        # Well formed: it gets as far as the gateway (out of reach here: 503, ask again later).
        down = http.post("/v1/gate", json={"model": MODEL, "candidate": "2", "guardrails": [KEY_GUARDRAIL]})
        assert down.status_code == 503 and "STANCH_GATEWAY_URL" in down.json()["detail"]
