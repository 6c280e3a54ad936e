"""Where a probe goes: the gateway's own chat endpoint (what users get, or one version directly),
and a model's own OpenAI-compatible serving URL configured in targets.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.probe.client import ChatRequest, ask
from stanch.targets.base import TargetError
from stanch.targets.config import TargetsError, load_targets
from stanch.targets.gateway import GatewayTarget
from stanch.targets.openai import OpenAITarget
from tests.unit.test_probe_client import MULTI_TURN, fake_openai  # noqa: F401 (the fixture)

TARGETS = """
targets:
  vllm:
    openai:
      base_url: "{base_url}/v1"
      api_key_env: VLLM_KEY
      versions: {{"1": llama-3-8b-v1, "2": llama-3-8b-v2}}
  azure:
    openai:
      base_url: "{base_url}/v1"
      model: "{{model}}-deployment"
      headers: {{x-tenant: support}}
      header_env: {{api-key: AZURE_OPENAI_KEY}}
"""
ENV = {"VLLM_KEY": "k-vllm", "AZURE_OPENAI_KEY": "k-azure"}


def configured(tmp_path: Path, base_url: str, env: dict[str, str] = ENV) -> dict[str, OpenAITarget]:
    path = tmp_path / "targets.yaml"
    path.write_text(TARGETS.format(base_url=base_url))
    return load_targets(path, env=env)


# --- the gateway ------------------------------------------------------------------------


def test_the_gateway_is_probed_as_users_reach_it_without_eating_their_rate_limits():
    endpoint = GatewayTarget("http://gw:8300/", admin_token="t-admin").chat_endpoint("support-bot")

    assert (endpoint.url, endpoint.model) == ("http://gw:8300/v1/chat/completions", "support-bot")
    # The gateway spends no client's budget on a probe only when the admin token vouches for it.
    assert endpoint.headers == {"x-stanch-probe": "1", "x-stanch-admin-token": "t-admin"}
    assert GatewayTarget("http://gw:8300/").chat_endpoint("support-bot").headers == {"x-stanch-probe": "1"}


def test_a_version_is_probed_directly_with_the_admin_token_when_there_is_one():
    with_token = GatewayTarget("http://gw:8300", admin_token="t-admin").chat_endpoint("support-bot", "release")
    without = GatewayTarget("http://gw:8300").chat_endpoint("support-bot", "2")

    assert with_token.headers == {"x-stanch-probe": "1", "x-stanch-version": "release", "x-stanch-admin-token": "t-admin"}
    assert without.headers == {"x-stanch-probe": "1", "x-stanch-version": "2"}
    assert "t-admin" not in repr(with_token)


def test_a_version_that_could_split_a_header_is_refused():
    with pytest.raises(TargetError) as refused:
        GatewayTarget("http://gw:8300").chat_endpoint("support-bot", "2\r\nx-evil: 1")

    assert refused.value.retryable is False and "control character" in str(refused.value)


async def test_a_gateway_probe_reaches_its_chat_completions(fake_openai):  # noqa: F811
    endpoint = GatewayTarget(fake_openai.base_url, admin_token="t-admin").chat_endpoint("support-bot", "release")

    [answer] = await ask(endpoint, ChatRequest(messages=MULTI_TURN))

    [(body, headers)] = fake_openai.requests
    assert answer.status_code == 200 and body["model"] == "support-bot"
    assert (headers["x-stanch-version"], headers["x-stanch-admin-token"]) == ("release", "t-admin")


# --- a model's own serving URL ------------------------------------------------------------


async def test_an_openai_target_sends_the_mapped_model_with_its_key(tmp_path, fake_openai):  # noqa: F811
    targets = configured(tmp_path, fake_openai.base_url)

    await ask(targets["vllm"].chat_endpoint("support-bot", "2"), ChatRequest(messages=MULTI_TURN))
    await ask(targets["azure"].chat_endpoint("support-bot"), ChatRequest(messages=MULTI_TURN))

    (vllm_body, vllm_headers), (azure_body, azure_headers) = fake_openai.requests
    assert vllm_body["model"] == "llama-3-8b-v2" and vllm_headers["authorization"] == "Bearer k-vllm"
    assert azure_body["model"] == "support-bot-deployment"
    assert (azure_headers["api-key"], azure_headers["x-tenant"]) == ("k-azure", "support") and "authorization" not in azure_headers


def test_a_version_the_target_does_not_map_is_refused_naming_the_ones_it_does(tmp_path):
    targets = configured(tmp_path, "http://vllm:8000")

    with pytest.raises(TargetError) as refused:
        targets["vllm"].chat_endpoint("support-bot", "3")

    assert refused.value.retryable is False and "maps no version '3'" in str(refused.value) and "['1', '2']" in str(refused.value)


def test_without_versions_the_url_serves_whatever_version_is_asked(tmp_path):
    targets = configured(tmp_path, "http://azure")

    assert targets["azure"].chat_endpoint("support-bot", "release").model == "support-bot-deployment"


def test_the_release_is_the_default_model_when_no_version_maps_it(tmp_path):
    # Verify asks for "release" when the alert named no version: a versions map without it still
    # answers, with the URL's default model, and still refuses every other unmapped version.
    target = OpenAITarget(OpenAITarget.Config(base_url="http://vllm:8000/v1", model="llama-3-8b", versions={"1": "llama-3-8b-v1"}))

    assert target.chat_endpoint("support-bot", "release").model == "llama-3-8b"
    assert configured(tmp_path, "http://vllm:8000")["vllm"].chat_endpoint("support-bot", "release").model == "support-bot"
    with pytest.raises(TargetError, match="maps no version '3'"):
        target.chat_endpoint("support-bot", "3")


def test_a_release_the_versions_map_names_is_that_model():
    config = OpenAITarget.Config(base_url="http://vllm:8000/v1", versions={"1": "llama-3-8b-v1", "release": "llama-3-8b-v2"})

    assert OpenAITarget(config).chat_endpoint("support-bot", "release").model == "llama-3-8b-v2"


def test_a_model_name_that_needs_a_version_cannot_guess_the_release():
    target = OpenAITarget(OpenAITarget.Config(base_url="http://ollama:11434/v1", model="llama3:{version}"), name="ollama")

    with pytest.raises(TargetError) as refused:
        target.chat_endpoint("support-bot", "release")

    assert refused.value.retryable is False and 'map one under versions: as "release"' in str(refused.value)
    assert target.chat_endpoint("support-bot", "8b").model == "llama3:8b"


def test_a_missing_key_is_named_when_the_targets_file_is_read(tmp_path):
    with pytest.raises(TargetsError) as refused:
        configured(tmp_path, "http://vllm:8000", env={"VLLM_KEY": "k"})

    assert "targets.azure.openai" in str(refused.value) and "AZURE_OPENAI_KEY is not set" in str(refused.value)


def test_a_typo_in_an_openai_target_is_refused_by_name(tmp_path):
    path = tmp_path / "targets.yaml"
    path.write_text("targets:\n  vllm:\n    openai: {base_url: 'http://vllm/v1', api_key: sk-inline}\n")

    with pytest.raises(TargetsError) as refused:
        load_targets(path, env={})

    assert "targets.vllm.openai.api_key" in str(refused.value)


async def test_an_openai_target_changes_nothing_and_says_where_to_act(tmp_path):
    target = configured(tmp_path, "http://vllm:8000")["vllm"]
    action = ActionSpec(kind="block_prompts", params={"patterns": ["key"]})
    applied = AppliedAction(kind="block_prompts", stage="contain", index=0, target=TargetRef(model="m"), idempotency_key="k")

    for call in (target.apply("m", action, "k", "INC-1"), target.undo(applied, "u"), target.start_job("m", "finetune", {}, "k")):
        with pytest.raises(TargetError) as refused:
            await call
        assert refused.value.retryable is False and "act through the gateway or a registry" in str(refused.value)
    assert target.plan("m", action, "k") == []
    state = await target.state("support-bot")
    assert state["versions"] == {"1": "llama-3-8b-v1", "2": "llama-3-8b-v2"} and state["base_url"] == "http://vllm:8000/v1"
