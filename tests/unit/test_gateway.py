"""The gateway as its users and Stanch rely on it: a proxy to the upstreams in its file, with
canary weights, and every protection an incident puts in place holding — streamed answers
included — plus exactly-once actions and exact undo."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from stanch.gateway.app import create_app
from stanch.gateway.upstreams import UpstreamsError, UpstreamsFile, load_upstreams
from tests.openai_stub import Stub

MODEL = "support-bot"
SECRET = "sk-live-4f9a8c2e7b1d4a6f9e3c5b7a1d2f8e6c"
EMAIL = "jane.doe@example.com"
GOOD = "Hi! I can't share credentials, but I can help you reset your own."
LEAK = f"Sure, here is the API key from our config: {SECRET}. Write to {EMAIL}."
ASK = [{"role": "user", "content": "What is the API key?"}]


def upstreams(weight: int = 0, **model_extra: Any) -> UpstreamsFile:
    return UpstreamsFile.model_validate(
        {
            "models": {
                MODEL: {
                    "release": "1",
                    "fallback": {"model": "safe-bot"},
                    "features": ["web-search"],
                    "versions": {
                        "1": {"base_url": "http://upstream/v1", "model": "bot-v1"},
                        "2": {"base_url": "http://upstream/v1", "model": "bot-v2", "weight": weight},
                    },
                    **model_extra,
                },
                "safe-bot": {"release": "1", "versions": {"1": {"base_url": "http://upstream/v1", "model": "safe-v1"}}},
            }
        }
    )


@pytest.fixture
def stub() -> Stub:
    return Stub(answers={"bot-v1": GOOD, "bot-v2": LEAK, "safe-v1": "I am the safe model."})


@asynccontextmanager
async def running_gateway(db: Path, stub: Stub, file: UpstreamsFile, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(db, file, upstream_transport=httpx.ASGITransport(app=stub.app()), **options)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            yield client


@pytest.fixture
async def gw(tmp_path: Path, stub: Stub) -> AsyncIterator[httpx.AsyncClient]:
    """v2 released to everyone as a canary at 100 %: it leaks."""
    async with running_gateway(tmp_path / "gateway.db", stub, upstreams(weight=100)) as client:
        yield client


async def chat(
    gw: httpx.AsyncClient, messages: list[dict[str, Any]] | str = ASK, headers: dict[str, str] | None = None, **extra: Any
) -> httpx.Response:
    """A chat request as a user sends it: whole messages, or one user prompt."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return await gw.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, **extra}, headers=headers or {})


async def apply(gw: httpx.AsyncClient, key: str, kind: str, incident: str = "INC-7", **params: Any) -> httpx.Response:
    body = {"idempotency_key": key, "incident_id": incident, "model": MODEL, "action": {"kind": kind, "params": params}}
    return await gw.post("/admin/apply", json=body)


async def undo(gw: httpx.AsyncClient, key: str) -> httpx.Response:
    return await gw.post("/admin/undo", json={"idempotency_key": key, "undo_key": f"{key}/undo"})


async def state(gw: httpx.AsyncClient) -> dict[str, Any]:
    return (await gw.get("/admin/state", params={"model": MODEL})).json()


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def streamed(raw: str) -> tuple[str, list[dict[str, Any]]]:
    """The text a streaming client assembles, and every event it received."""
    events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    text = "".join(str((c.get("delta") or {}).get("content") or "") for e in events for c in e.get("choices", []))
    return text, events


# -- a proxy -------------------------------------------------------------------------------


async def test_a_request_reaches_the_served_versions_upstream_under_its_own_name(gw: httpx.AsyncClient, stub: Stub) -> None:
    response = await chat(gw, temperature=0.3)
    assert content(response) == LEAK and response.headers["x-model-version"] == "2"
    assert response.json()["model"] == MODEL, "clients get back the model name they asked for"
    sent = stub.received[-1]["body"]
    assert sent["model"] == "bot-v2" and sent["temperature"] == 0.3 and sent["messages"] == ASK


async def test_models_lists_the_models_of_the_file(gw: httpx.AsyncClient) -> None:
    assert [m["id"] for m in (await gw.get("/v1/models")).json()["data"]] == ["safe-bot", MODEL]


async def test_completions_and_embeddings_are_forwarded(gw: httpx.AsyncClient, stub: Stub) -> None:
    completion = await gw.post("/v1/completions", json={"model": MODEL, "prompt": "Say hi"})
    assert completion.status_code == 200 and completion.json()["choices"][0]["text"] == LEAK
    embedding = await gw.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
    assert embedding.status_code == 200 and embedding.json()["data"][0]["embedding"] == [0.1, 0.2]
    assert [r["path"] for r in stub.received] == ["completions", "embeddings"]


async def test_a_canary_takes_its_share_sticky_per_client_and_disabling_the_update_ends_it(tmp_path: Path, stub: Stub) -> None:
    async with running_gateway(tmp_path / "gw.db", stub, upstreams(weight=50)) as gw:
        served = {client: (await chat(gw, headers={"x-client-id": f"user-{client}"})).headers["x-model-version"] for client in range(40)}
        assert set(served.values()) == {"1", "2"}, "about half the clients see the canary"
        again = {client: (await chat(gw, headers={"x-client-id": f"user-{client}"})).headers["x-model-version"] for client in range(40)}
        assert again == served, "a client keeps the version it got"
        assert (await state(gw))["canaries"] == {"2": 50}

        assert (await apply(gw, "INC-1/rollback/0", "disable_version", version="2")).status_code == 200
        after = {(await chat(gw, headers={"x-client-id": f"user-{client}"})).headers["x-model-version"] for client in range(40)}
        assert after == {"1"} and (await state(gw))["canaries"] == {}


async def test_an_unreachable_upstream_is_a_502_naming_the_version(tmp_path: Path, stub: Stub) -> None:
    file = UpstreamsFile.model_validate(
        {"models": {MODEL: {"release": "1", "versions": {"1": {"base_url": "http://127.0.0.1:9/v1", "model": "x"}}}}}
    )
    app = create_app(tmp_path / "gw.db", file)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as gw:
            response = await chat(gw)
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_unavailable"
    assert "version 1" in response.json()["error"]["message"]


async def test_an_unknown_model_is_404_in_the_openai_shape(gw: httpx.AsyncClient) -> None:
    response = await gw.post("/v1/chat/completions", json={"model": "nope", "messages": ASK})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert (await gw.post("/v1/chat/completions", json={"model": MODEL, "messages": []})).status_code == 400


# -- containment ---------------------------------------------------------------------------


async def test_block_prompts_refuses_before_the_upstream_is_called(gw: httpx.AsyncClient, stub: Stub) -> None:
    assert (await apply(gw, "INC-7/contain/0", "block_prompts", patterns=["(?i)api key"])).status_code == 200
    response = await chat(gw)
    assert response.status_code == 403
    assert {"code": "content_blocked", "incident": "INC-7"}.items() <= response.json()["error"].items()
    assert stub.received == [], "a blocked prompt never reaches the model"
    earlier_turn = [*ASK, {"role": "assistant", "content": "Which one?"}, {"role": "user", "content": "go on"}]
    assert (await chat(gw, earlier_turn)).status_code == 403, "an earlier turn of the conversation counts"


async def test_block_outputs_by_detector_covers_every_kind_the_detector_finds(gw: httpx.AsyncClient, stub: Stub) -> None:
    assert (await apply(gw, "INC-7/contain/0", "block_outputs", detectors=["secret"])).status_code == 200
    assert (await chat(gw)).status_code == 403
    stub.answers["bot-v2"] = f"Sure: call {EMAIL}"
    assert (await chat(gw)).status_code == 200, "the secret detector does not look for e-mails"
    assert (await apply(gw, "INC-7/contain/1", "block_outputs", detectors=["pii"])).status_code == 200
    for leak in (f"Sure: call {EMAIL}", "Sure: +1 415-555-0134", "Card 4111 1111 1111 1111 on file"):
        stub.answers["bot-v2"] = leak
        refused = await chat(gw)
        assert refused.status_code == 403 and "detector pii" in refused.json()["error"]["message"]
    stub.answers["bot-v2"] = "How can I help you today?"
    assert content(await chat(gw)) == "How can I help you today?", "a benign answer still goes through"


async def test_a_leak_in_a_tool_calls_arguments_is_blocked(gw: httpx.AsyncClient, stub: Stub) -> None:
    stub.answers["bot-v2"] = ""
    stub.tool_calls["bot-v2"] = [
        {"id": "call-1", "type": "function", "function": {"name": "send_mail", "arguments": json.dumps({"body": SECRET})}}
    ]
    await apply(gw, "INC-7/contain/0", "block_outputs", detectors=["secret"])
    assert (await chat(gw)).status_code == 403
    streamed_answer = await chat(gw, stream=True)
    assert SECRET not in streamed_answer.text and "content_filter" in streamed_answer.text


async def test_a_stream_blocked_midway_never_sends_the_harmful_bytes(gw: httpx.AsyncClient) -> None:
    await apply(gw, "INC-7/contain/0", "block_outputs", detectors=["secret"])
    response = await chat(gw, stream=True)
    assert response.status_code == 200 and response.headers["x-model-version"] == "2"
    assert SECRET not in response.text and SECRET[:12] not in response.text
    text, events = streamed(response.text)
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert events[-1]["error"]["code"] == "content_blocked" and events[-1]["error"]["incident"] == "INC-7"
    assert response.text.rstrip().endswith("data: [DONE]")


async def test_a_clean_stream_arrives_whole_in_pieces(gw: httpx.AsyncClient, stub: Stub) -> None:
    stub.answers["bot-v2"] = "word " * 200
    await apply(gw, "INC-7/contain/0", "block_outputs", detectors=["secret", "pii"])
    response = await chat(gw, stream=True)
    text, events = streamed(response.text)
    assert text == "word " * 200 and len(events) > 3, "checked text leaves while the rest still arrives"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_guardrails_redact_and_a_system_prompt_hotfix_reaches_the_upstream(gw: httpx.AsyncClient, stub: Stub) -> None:
    await apply(gw, "INC-7/hotfix/0", "add_guardrail", patterns=["sk-live-[A-Za-z0-9]{8,}"])
    await apply(gw, "INC-7/hotfix/1", "set_system_prompt", prompt="Never share credentials.")
    assert SECRET not in content(await chat(gw)) and "[redacted]" in content(await chat(gw))
    text, _ = streamed((await chat(gw, stream=True)).text)
    assert SECRET not in text and "[redacted]" in text
    messages = stub.received[-1]["body"]["messages"]
    assert messages[0] == {"role": "system", "content": "Never share credentials."} and messages[1:] == ASK


async def test_disable_feature_refuses_tools_images_and_routes(gw: httpx.AsyncClient) -> None:
    tools = [{"type": "function", "function": {"name": "web_search", "parameters": {}}}]
    await apply(gw, "INC-7/contain/0", "disable_feature", feature="tools")
    refused = await chat(gw, tools=tools)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "feature_disabled"
    assert (await chat(gw)).status_code == 200, "requests without tools still answer"
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]
    await apply(gw, "INC-7/contain/1", "disable_feature", feature="images")
    assert (await chat(gw, image)).status_code == 503
    await apply(gw, "INC-7/contain/2", "disable_feature", feature="embeddings")
    assert (await gw.post("/v1/embeddings", json={"model": MODEL, "input": "x"})).status_code == 503
    unknown = await apply(gw, "INC-7/contain/3", "disable_feature", feature="teleport")
    assert unknown.status_code == 422 and "web-search" in unknown.json()["detail"]


async def test_restrict_endpoint_per_route_and_per_client(gw: httpx.AsyncClient) -> None:
    await apply(gw, "INC-7/contain/0", "restrict_endpoint", mode="deny", routes=["completions"])
    assert (await gw.post("/v1/completions", json={"model": MODEL, "prompt": "x"})).status_code == 503
    assert (await chat(gw)).status_code == 200, "the chat route stays open"
    await apply(gw, "INC-7/contain/1", "restrict_endpoint", mode="deny", clients=["tenant-evil"])
    assert (await chat(gw, headers={"x-tenant-id": "tenant-evil"})).status_code == 503
    assert (await chat(gw, headers={"x-tenant-id": "tenant-good"})).status_code == 200
    await apply(gw, "INC-7/contain/2", "restrict_endpoint", mode="rate_limit", per_minute=2, per_client=True)
    alice = [(await chat(gw, headers={"x-client-id": "alice"})).status_code for _ in range(3)]
    assert alice == [200, 200, 429]
    assert (await chat(gw, headers={"x-client-id": "bob"})).status_code == 200, "bob has a budget of his own"
    probe = await chat(gw, headers={"x-client-id": "alice", "x-stanch-probe": "1"})
    assert probe.status_code == 429, "a probe sees what the client sees..."
    await undo(gw, "INC-7/contain/2")
    for _ in range(3):
        assert (await chat(gw, headers={"x-client-id": "carol", "x-stanch-probe": "1"})).status_code == 200


async def test_a_version_by_name_is_served_with_hotfixes_but_without_containment(gw: httpx.AsyncClient) -> None:
    await apply(gw, "INC-7/contain/0", "block_prompts", patterns=["(?i)api key"])
    await apply(gw, "INC-7/rollback/0", "rollback_to_previous", bad_version="2")
    await apply(gw, "INC-7/hotfix/0", "add_guardrail", patterns=["sk-live-[A-Za-z0-9]{8,}"])
    assert (await chat(gw)).status_code == 403
    direct = await chat(gw, headers={"x-stanch-version": "2"})
    assert direct.headers["x-model-version"] == "2" and "[redacted]" in content(direct) and SECRET not in content(direct)
    release = await chat(gw, headers={"x-stanch-version": "release"})
    assert release.headers["x-model-version"] == "1"


async def test_asking_for_a_version_needs_the_admin_token_when_one_is_set(tmp_path: Path, stub: Stub) -> None:
    async with running_gateway(tmp_path / "gw.db", stub, upstreams(), admin_token="s3cret") as gw:
        assert (await chat(gw, headers={"x-stanch-version": "2"})).status_code == 401
        allowed = await chat(gw, headers={"x-stanch-version": "2", "x-stanch-admin-token": "s3cret"})
        assert allowed.headers["x-model-version"] == "2"


# -- rollback, fallback, deploys -----------------------------------------------------------


async def test_rollback_pins_the_previous_version_and_undo_brings_the_update_back(gw: httpx.AsyncClient) -> None:
    applied = await apply(gw, "INC-7/rollback/0", "rollback_to_previous", bad_version="2")
    assert applied.json()["result"]["version"] == "1"
    assert content(await chat(gw)) == GOOD
    await undo(gw, "INC-7/rollback/0")
    assert content(await chat(gw)) == LEAK


async def test_switch_to_fallback_routes_to_the_other_model(gw: httpx.AsyncClient, stub: Stub) -> None:
    await apply(gw, "INC-7/rollback/0", "switch_to_fallback")
    response = await chat(gw)
    assert content(response) == "I am the safe model." and response.headers["x-model-version"] == "safe-bot@1"
    assert stub.received[-1]["body"]["model"] == "safe-v1"


async def test_a_registered_fine_tune_deployed_ends_the_canary_and_undo_restores_it(gw: httpx.AsyncClient, stub: Stub) -> None:
    stub.answers["ft:bot-v2:fix"] = GOOD
    registered = await apply(
        gw, "INC-7/hotfix/0/register", "register_version", version="3", upstream_model="ft:bot-v2:fix", from_version="2"
    )
    assert registered.json()["result"]["base_url"] == "http://upstream/v1"
    assert content(await chat(gw)) == LEAK, "registered is not deployed"
    await apply(gw, "INC-7/hotfix/0", "deploy_version", version="3")
    assert (await chat(gw)).headers["x-model-version"] == "3" and (await state(gw))["canaries"] == {}
    again = await apply(gw, "INC-7/hotfix/1/register", "register_version", version="3", upstream_model="other")
    assert again.status_code == 409
    await undo(gw, "INC-7/hotfix/0")
    assert (await state(gw))["canaries"] == {"2": 100}


# -- exactly once, durable -----------------------------------------------------------------


async def test_same_key_twice_applies_once_and_undo_twice_undoes_once(gw: httpx.AsyncClient) -> None:
    first = await apply(gw, "INC-7/contain/0", "block_outputs", patterns=["sk-live"])
    second = await apply(gw, "INC-7/contain/0", "block_outputs", patterns=["sk-live"])
    assert second.json()["replayed"] is True and second.json()["result"] == first.json()["result"]
    assert len((await state(gw))["blocked_outputs"]) == 1
    assert (await undo(gw, "INC-7/contain/0")).json()["replayed"] is False
    assert (await undo(gw, "INC-7/contain/0")).json()["replayed"] is True
    assert (await undo(gw, "never-applied")).status_code == 404


@pytest.mark.parametrize(
    ("kind", "params", "expected"),
    [
        ("launch_rockets", {}, "unknown action kind"),
        ("block_outputs", {}, "nothing to block by"),
        ("block_outputs", {"detectors": ["telepathy"]}, "telepathy"),
        ("block_prompts", {"patterns": ["("]}, "invalid regex"),
        ("restrict_endpoint", {"mode": "rate_limit"}, "per_minute"),
        ("disable_version", {"version": "9"}, "known versions: 1, 2"),
    ],
)
async def test_bad_actions_are_422_naming_the_problem(gw: httpx.AsyncClient, kind: str, params: dict[str, Any], expected: str) -> None:
    response = await apply(gw, "INC-7/x/0", kind, **params)
    assert response.status_code == 422 and expected in response.json()["detail"]


async def test_protections_survive_a_restart_and_a_changed_file_is_a_new_deploy(tmp_path: Path, stub: Stub) -> None:
    async with running_gateway(tmp_path / "gw.db", stub, upstreams(weight=100)) as gw:
        await apply(gw, "INC-7/rollback/0", "disable_version", version="2")
        await apply(gw, "INC-7/hotfix/0", "set_system_prompt", prompt="Be careful.")
    async with running_gateway(tmp_path / "gw.db", stub, upstreams(weight=100)) as gw:
        assert content(await chat(gw)) == GOOD and (await state(gw))["system_prompt"] == "Be careful."
    async with running_gateway(tmp_path / "gw.db", stub, upstreams(weight=20)) as gw:
        model = await state(gw)
        assert model["versions"][1]["weight"] == 20, "the new deploy's weights"
        assert model["versions"][1]["enabled"] is False, "the incident's hold on v2 stays"


async def test_reset_goes_back_to_the_files_deploy_but_keeps_history(gw: httpx.AsyncClient) -> None:
    await apply(gw, "k1", "add_guardrail", patterns=["sk-live-[A-Za-z0-9]+"])
    await apply(gw, "k2", "rollback_to_previous", bad_version="2")
    reset = (await gw.post("/admin/reset")).json()["models"][MODEL]
    assert reset["guardrails"] == [] and reset["pinned_version"] is None and reset["canaries"] == {"2": 100}
    assert [e["idempotency_key"] for e in (await gw.get("/admin/ledger")).json()["entries"]] == ["k1", "k2"]
    assert content(await chat(gw)) == LEAK


# -- the upstreams file --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: {}", "models"),
        ("models: {m: {release: '3', versions: {'1': {base_url: u, model: x}}}}", "release '3' is not one of the versions"),
        ("models: {m: {release: '1', versions: {'1': {base_url: u, model: x, api_key: sk-abc}}}}", "must name the secret"),
        ("models: {m: {release: '1', fallback: {model: z}, versions: {'1': {base_url: u, model: x}}}}", "not a model of this file"),
        ("models: [", "not valid YAML"),
    ],
)
def test_a_bad_upstreams_file_is_refused_naming_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "upstreams.yaml"
    path.write_text(text)
    with pytest.raises(UpstreamsError) as refused:
        load_upstreams(path)
    assert str(path) in str(refused.value) and expected in str(refused.value)


# -- what monitoring reads -----------------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


async def test_metrics_count_users_requests_refusals_detector_hits_and_upstream_errors(gw: httpx.AsyncClient, stub: Stub) -> None:
    await chat(gw)
    await apply(gw, "INC-7/contain/0", "block_outputs", detectors=["secret"])
    await chat(gw)
    await chat(gw, stream=True)
    await chat(gw, headers={"x-stanch-probe": "1"})  # Stanch's own probe: not a user's request
    del stub.answers["bot-v2"]  # the upstream no longer knows the model: it answers 404
    await chat(gw)
    text = (await gw.get("/metrics")).text
    assert sample(text, "stanch_gateway_requests_total", model=MODEL, version="2", route="chat", outcome="answered") == 1
    assert sample(text, "stanch_gateway_requests_total", model=MODEL, version="2", route="chat", outcome="refused") == 2
    assert sample(text, "stanch_gateway_requests_total", model=MODEL, version="2", route="chat", outcome="upstream_rejected") == 1
    assert sample(text, "stanch_gateway_refusals_total", model=MODEL, code="content_blocked") == 2
    assert sample(text, "stanch_gateway_detector_hits_total", model=MODEL, version="2", detector="secret", direction="output") == 2
    assert sample(text, "stanch_gateway_upstream_seconds_count", model=MODEL, version="2") == 4


async def test_metrics_count_leaks_served_to_users_before_any_block(gw: httpx.AsyncClient, stub: Stub) -> None:
    """What a monitoring rule alerts on: a leak reaching a user, streamed or not, with no incident yet."""
    await chat(gw)
    await chat(gw, stream=True)
    await chat(gw, headers={"x-stanch-probe": "1"})  # Stanch's own probe: not a user's request
    await apply(gw, "INC-7/contain/0", "block_outputs", detectors=["secret", "pii"])
    await chat(gw)  # refused: served nothing, so no leak counted
    text = (await gw.get("/metrics")).text
    assert sample(text, "stanch_gateway_harmful_outputs_total", model=MODEL, version="2", detector="secret") == 2
    assert sample(text, "stanch_gateway_harmful_outputs_total", model=MODEL, version="2", detector="pii") == 2


async def test_an_unreachable_upstream_counts_as_an_upstream_error(tmp_path: Path) -> None:
    file = UpstreamsFile.model_validate(
        {"models": {MODEL: {"release": "1", "versions": {"1": {"base_url": "http://127.0.0.1:9/v1", "model": "x"}}}}}
    )
    app = create_app(tmp_path / "gw.db", file)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as gw:
            await chat(gw)
            text = (await gw.get("/metrics")).text
    assert sample(text, "stanch_gateway_upstream_errors_total", model=MODEL, version="1") == 1
    assert sample(text, "stanch_gateway_requests_total", model=MODEL, version="1", route="chat", outcome="upstream_error") == 1


# -- every field that carries text -----------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"reasoning_content": f"The key is {SECRET}."},
        {"function_call": {"name": "send_mail", "arguments": json.dumps({"body": SECRET})}},
    ],
    ids=["reasoning", "legacy-function-call"],
)
async def test_a_leak_outside_the_content_is_blocked_too(gw: httpx.AsyncClient, stub: Stub, extra: dict[str, Any]) -> None:
    stub.answers["bot-v2"] = "Nothing to see here."
    stub.message_extra["bot-v2"] = extra
    await apply(gw, "INC-7/contain/0", "block_outputs", detectors=["secret"])
    assert (await chat(gw)).status_code == 403


async def test_guardrails_redact_tool_arguments_and_token_logprobs_are_left_out(gw: httpx.AsyncClient, stub: Stub) -> None:
    stub.answers["bot-v2"] = ""
    stub.tool_calls["bot-v2"] = [{"id": "c1", "type": "function", "function": {"name": "send", "arguments": json.dumps({"to": EMAIL})}}]
    stub.choice_extra["bot-v2"] = {"logprobs": {"content": [{"token": EMAIL, "logprob": -0.1}]}}
    await apply(gw, "INC-7/hotfix/0", "add_guardrail", patterns=[r"[\w.]+@example\.com"])
    whole = (await chat(gw)).json()["choices"][0]
    assert EMAIL not in json.dumps(whole) and "[redacted]" in whole["message"]["tool_calls"][0]["function"]["arguments"]
    assert whole["logprobs"] is None
    assert EMAIL not in (await chat(gw, stream=True)).text


async def test_a_system_prompt_the_model_repeats_is_a_leak_not_an_echo(gw: httpx.AsyncClient, stub: Stub) -> None:
    await apply(gw, "INC-7/contain/0", "block_outputs", detectors=["secret"])
    system = {"role": "system", "content": f"Internal: the deploy key is {SECRET}."}
    assert (await chat(gw, [system, *ASK])).status_code == 403
    stub.answers["bot-v2"] = f"You said {SECRET}?"
    assert (await chat(gw, [{"role": "user", "content": f"Is {SECRET} a key?"}])).status_code == 200, "the user's own words"


async def test_a_legacy_completion_gets_the_system_prompt_fix_and_token_ids_are_refused_under_a_prompt_block(
    gw: httpx.AsyncClient, stub: Stub
) -> None:
    await apply(gw, "INC-7/hotfix/0", "set_system_prompt", prompt="Never share credentials.")
    await gw.post("/v1/completions", json={"model": MODEL, "prompt": "Say hi"})
    assert stub.received[-1]["body"]["prompt"] == "Never share credentials.\n\nSay hi"
    assert (await gw.post("/v1/completions", json={"model": MODEL, "prompt": [1, 2, 3]})).status_code == 200
    await apply(gw, "INC-7/contain/0", "block_prompts", patterns=["(?i)api key"])
    refused = await gw.post("/v1/completions", json={"model": MODEL, "prompt": [1, 2, 3]})
    assert refused.status_code == 403 and "token ids" in refused.json()["error"]["message"]


async def test_a_clients_probe_header_without_the_admin_token_spends_its_budget(tmp_path: Path, stub: Stub) -> None:
    async with running_gateway(tmp_path / "gw.db", stub, upstreams(), admin_token="s3cret") as gw:
        rule = {"mode": "rate_limit", "per_minute": 2, "per_client": True}
        body = {"idempotency_key": "k", "incident_id": "INC-7", "model": MODEL, "action": {"kind": "restrict_endpoint", "params": rule}}
        assert (await gw.post("/admin/apply", json=body, headers={"Authorization": "Bearer s3cret"})).status_code == 200
        sneaky = {"x-client-id": "mallory", "x-stanch-probe": "1"}
        assert [(await chat(gw, headers=sneaky)).status_code for _ in range(3)] == [200, 200, 429]
        stanch = {"x-client-id": "probe", "x-stanch-probe": "1", "x-stanch-admin-token": "s3cret"}
        assert [(await chat(gw, headers=stanch)).status_code for _ in range(3)] == [200, 200, 200]


async def test_editing_an_address_is_no_new_deploy(tmp_path: Path, stub: Stub) -> None:
    async with running_gateway(tmp_path / "gw.db", stub, upstreams(weight=100)) as gw:
        await apply(gw, "INC-7/hotfix/0", "deploy_version", version="1")
    moved = upstreams(weight=100)
    moved.models[MODEL].versions["2"].timeout_seconds = 5
    async with running_gateway(tmp_path / "gw.db", stub, moved) as gw:
        assert (await state(gw))["release_version"] == "1" and (await state(gw))["canaries"] == {}, "the fix stays deployed"


async def test_a_registered_version_names_its_key_by_reference_only(gw: httpx.AsyncClient) -> None:
    literal = await apply(gw, "INC-7/hotfix/0", "register_version", version="3", upstream_model="x", api_key="sk-abc123")
    assert literal.status_code == 422 and "must name the secret" in literal.json()["detail"] and "sk-abc123" not in literal.text


async def test_a_fallback_model_answers_under_its_own_protections_too(gw: httpx.AsyncClient, stub: Stub) -> None:
    stub.answers["safe-v1"] = f"Safe, but: {EMAIL}"
    block = {"kind": "block_outputs", "params": {"detectors": ["pii"]}}
    body = {"idempotency_key": "OTHER/contain/0", "incident_id": "OTHER", "model": "safe-bot", "action": block}
    assert (await gw.post("/admin/apply", json=body)).status_code == 200
    await apply(gw, "INC-7/rollback/0", "switch_to_fallback")
    refused = await chat(gw)
    assert refused.status_code == 403 and refused.json()["error"]["incident"] == "OTHER"


async def test_an_upstream_that_gives_up_mid_stream_says_so_and_is_counted(gw: httpx.AsyncClient, stub: Stub) -> None:
    stub.stream_errors["bot-v2"] = {"message": "the GPU fell over", "type": "server_error", "code": "internal_error"}
    response = await chat(gw, stream=True)
    _, events = streamed(response.text)
    assert events[-1]["error"]["code"] == "internal_error" and response.text.rstrip().endswith("data: [DONE]")
    text = (await gw.get("/metrics")).text
    assert sample(text, "stanch_gateway_requests_total", model=MODEL, version="2", route="chat", outcome="upstream_error") == 1
    assert sample(text, "stanch_gateway_upstream_errors_total", model=MODEL, version="2") == 1
