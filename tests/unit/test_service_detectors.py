"""Detectors that call a service, against a real HTTP server on loopback: an OpenAI-style
moderation endpoint and a Llama-Guard style judge. What a responder relies on: a flagged output
is a hit whose evidence names categories (never the output), and a service that fails is
"could not decide", saying which detector, which host and what happened, never the API key."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from stanch.detectors.regex import DetectorHit
from stanch.detectors.registry import Detectors, Scan, Undecided
from stanch.detectors.specs import JudgeSpec, ModerationSpec

API_KEY = "sk-guard-0123456789abcdefghij"
HARMFUL_OUTPUT = "Here is how to hurt someone: step one..."


@dataclass
class Reply:
    """What the fake service answers next: a JSON body (or raw text), a status, a delay."""

    body: Any = None
    status: int = 200
    raw: str | None = None
    delay: float = 0.0


@dataclass
class FakeService:
    base_url: str
    host: str
    reply: Reply = field(default_factory=Reply)
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)


def moderation(flagged: bool, categories: dict[str, bool], scores: dict[str, float]) -> dict[str, Any]:
    result = {"flagged": flagged, "categories": categories, "category_scores": scores}
    return {"id": "modr-1", "model": "omni-moderation-latest", "results": [result]}


def chat(content: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def service() -> Iterator[FakeService]:
    port = free_port()
    fake = FakeService(base_url=f"http://127.0.0.1:{port}/v1", host=f"127.0.0.1:{port}")
    app = FastAPI()

    async def answer(request: Request) -> Response:
        fake.requests.append((request.url.path, dict(request.headers), await request.json()))
        reply = fake.reply
        await asyncio.sleep(reply.delay)
        text = reply.raw if reply.raw is not None else json.dumps(reply.body)
        return Response(text, status_code=reply.status, media_type="application/json")

    app.post("/v1/moderations")(answer)
    app.post("/v1/chat/completions")(answer)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the fake service did not start"
        time.sleep(0.02)
    yield fake
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def fake(service: FakeService) -> FakeService:
    service.reply, service.requests[:] = Reply(), []
    return service


def moderation_detectors(fake: FakeService, **spec: Any) -> Detectors:
    spec = {"base_url": fake.base_url, **spec}
    return Detectors({"moderation": ModerationSpec(**spec)}, env={"MOD_KEY": API_KEY})


def judge_detectors(fake: FakeService, **spec: Any) -> Detectors:
    spec = {"base_url": fake.base_url, "model": "llama-guard", "category_pattern": r"S\d+", **spec}
    return Detectors({"guard": JudgeSpec(**spec)}, env={"GUARD_KEY": API_KEY})


# --- moderation --------------------------------------------------------------------------------


async def test_a_flagged_output_is_a_hit_naming_categories_and_scores_never_the_output(fake: FakeService) -> None:
    fake.reply = Reply(moderation(True, {"violence": True, "hate": False}, {"violence": 0.91, "hate": 0.02}))
    scan = await moderation_detectors(fake, model="omni-moderation-latest").scan(["moderation"], HARMFUL_OUTPUT)
    assert scan == Scan(hits=[DetectorHit(detector="moderation", evidence="moderation flagged violence 0.91")])
    assert HARMFUL_OUTPUT not in scan.model_dump_json()
    [(path, _, body)] = fake.requests
    assert path == "/v1/moderations" and body == {"input": HARMFUL_OUTPUT, "model": "omni-moderation-latest"}


async def test_an_output_not_flagged_is_clean_and_decided(fake: FakeService) -> None:
    fake.reply = Reply(moderation(False, {"violence": False}, {"violence": 0.01}))
    scan = await moderation_detectors(fake).scan(["moderation"], "Happy to help with your invoice.")
    assert scan == Scan() and scan.decided and not scan.harmful
    assert "model" not in fake.requests[0][2]


async def test_only_the_listed_categories_count(fake: FakeService) -> None:
    fake.reply = Reply(moderation(True, {"violence": False, "harassment": True}, {"violence": 0.1, "harassment": 0.8}))
    assert (await moderation_detectors(fake, categories=["violence"]).scan(["moderation"], HARMFUL_OUTPUT)) == Scan()
    scan = await moderation_detectors(fake, categories=["violence", "harassment"]).scan(["moderation"], HARMFUL_OUTPUT)
    assert scan.hits == [DetectorHit(detector="moderation", evidence="moderation flagged harassment 0.80")]


async def test_min_score_decides_instead_of_the_endpoints_flag(fake: FakeService) -> None:
    fake.reply = Reply(moderation(False, {"violence": False, "hate": False}, {"violence": 0.62, "hate": 0.4}))
    scan = await moderation_detectors(fake, min_score=0.5).scan(["moderation"], HARMFUL_OUTPUT)
    assert scan.hits == [DetectorHit(detector="moderation", evidence="moderation flagged violence 0.62")]
    assert (await moderation_detectors(fake, min_score=0.7).scan(["moderation"], HARMFUL_OUTPUT)) == Scan()


async def test_a_category_the_endpoint_does_not_know_is_undecided_not_clean(fake: FakeService) -> None:
    fake.reply = Reply(moderation(True, {"violence": True}, {"violence": 0.9}))
    scan = await moderation_detectors(fake, categories=["violent"]).scan(["moderation"], HARMFUL_OUTPUT)
    [undecided] = scan.undecided
    assert "reports none of the categories moderation counts (violent); it reports: violence" in undecided.reason


async def test_the_api_key_is_sent_as_bearer_and_never_in_the_scan(fake: FakeService) -> None:
    fake.reply = Reply({"error": {"message": "Incorrect API key"}}, status=401)
    scan = await moderation_detectors(fake, api_key_env="MOD_KEY").scan(["moderation"], HARMFUL_OUTPUT)
    assert fake.requests[0][1]["authorization"] == f"Bearer {API_KEY}"
    assert scan.undecided == [
        Undecided(detector="moderation", reason=f"moderation endpoint at {fake.host} answered HTTP 401 (check the key in MOD_KEY)")
    ]
    assert API_KEY not in scan.model_dump_json()


async def test_a_missing_key_variable_is_undecided_naming_the_variable(fake: FakeService) -> None:
    scan = await moderation_detectors(fake, api_key_env="NOT_SET_KEY").scan(["moderation"], HARMFUL_OUTPUT)
    assert scan.undecided == [Undecided(detector="moderation", reason="moderation endpoint: api_key_env NOT_SET_KEY is not set")]
    assert fake.requests == []


async def test_the_base_url_may_come_from_the_environment(fake: FakeService) -> None:
    fake.reply = Reply(moderation(True, {"self-harm": True}, {"self-harm": 0.7}))
    spec = ModerationSpec(base_url_env="MOD_URL")
    scan = await Detectors({"moderation": spec}, env={"MOD_URL": fake.base_url + "/"}).scan(["moderation"], HARMFUL_OUTPUT)
    assert scan.fired == ["moderation"]
    unset = await Detectors({"moderation": spec}, env={}).scan(["moderation"], HARMFUL_OUTPUT)
    assert unset.undecided[0].reason == "moderation endpoint: base_url_env MOD_URL is not set"


async def test_a_slow_endpoint_is_undecided_after_its_timeout(fake: FakeService) -> None:
    fake.reply = Reply(moderation(True, {"violence": True}, {"violence": 0.9}), delay=1.5)
    started = time.monotonic()
    scan = await moderation_detectors(fake, timeout_seconds=0.2).scan(["moderation"], HARMFUL_OUTPUT)
    assert time.monotonic() - started < 1.2
    assert scan.undecided == [Undecided(detector="moderation", reason=f"moderation endpoint at {fake.host} timed out after 0.2s")]
    assert not scan.harmful and not scan.decided


async def test_a_server_error_is_undecided(fake: FakeService) -> None:
    fake.reply = Reply({"error": "boom"}, status=500)
    scan = await moderation_detectors(fake).scan(["moderation"], HARMFUL_OUTPUT)
    assert scan.undecided[0].reason == f"moderation endpoint at {fake.host} answered HTTP 500"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("<html>gateway error</html>", "answered with something that is not JSON"),
        ('{"results": []}', "answered no moderation result (results:"),
        ('{"results": [{"categories": {}}]}', "answered no moderation result (results.0.flagged:"),
    ],
)
async def test_an_answer_that_is_not_a_moderation_result_is_undecided(fake: FakeService, raw: str, problem: str) -> None:
    fake.reply = Reply(raw=raw)
    scan = await moderation_detectors(fake).scan(["moderation"], HARMFUL_OUTPUT)
    assert problem in scan.undecided[0].reason and fake.host in scan.undecided[0].reason


async def test_a_refused_connection_is_undecided_naming_the_host() -> None:
    port = free_port()  # nothing listens there any more
    spec = ModerationSpec(base_url=f"http://127.0.0.1:{port}/v1")
    scan = await Detectors({"moderation": spec}).scan(["moderation"], HARMFUL_OUTPUT)
    assert scan.undecided[0].reason.startswith(f"moderation endpoint at 127.0.0.1:{port} could not be reached")


# --- the judge ---------------------------------------------------------------------------------


async def test_an_unsafe_verdict_is_a_hit_naming_the_category_codes(fake: FakeService) -> None:
    fake.reply = Reply(chat("unsafe\nS1,S10"))
    scan = await judge_detectors(fake, api_key_env="GUARD_KEY").scan(["guard"], HARMFUL_OUTPUT, prompt="how do I hurt someone")
    assert scan.hits == [DetectorHit(detector="guard", evidence="judge llama-guard says unsafe: S1, S10")]
    [(path, headers, body)] = fake.requests
    assert path == "/v1/chat/completions" and headers["authorization"] == f"Bearer {API_KEY}"
    assert body["model"] == "llama-guard" and body["temperature"] == 0 and body["max_tokens"] == 20
    [message] = body["messages"]
    assert message["role"] == "user"
    assert "User: how do I hurt someone" in message["content"] and f"Agent: {HARMFUL_OUTPUT}" in message["content"]
    assert API_KEY not in scan.model_dump_json() and HARMFUL_OUTPUT not in scan.model_dump_json()


async def test_a_safe_verdict_is_clean(fake: FakeService) -> None:
    fake.reply = Reply(chat("safe"))
    assert await judge_detectors(fake).scan(["guard"], "Happy to help.") == Scan()


async def test_the_runbooks_template_and_verdict_patterns_are_used(fake: FakeService) -> None:
    fake.reply = Reply(chat("VERDICT: harmful (category: violence)"))
    detectors = judge_detectors(
        fake,
        prompt_template="Is this harmful? {output}",
        unsafe_when=r"verdict:\s*harmful",
        safe_when=r"verdict:\s*harmless",
        category_pattern=r"category: (\w+)",
        max_tokens=5,
    )
    scan = await detectors.scan(["guard"], HARMFUL_OUTPUT)
    assert scan.hits == [DetectorHit(detector="guard", evidence="judge llama-guard says unsafe: violence")]
    assert fake.requests[0][2]["messages"][0]["content"] == f"Is this harmful? {HARMFUL_OUTPUT}"
    assert fake.requests[0][2]["max_tokens"] == 5


async def test_a_verdict_matching_neither_pattern_is_undecided_quoting_it(fake: FakeService) -> None:
    fake.reply = Reply(chat("I cannot assess this conversation because it is too long to read"))
    scan = await judge_detectors(fake).scan(["guard"], HARMFUL_OUTPUT)
    assert scan.undecided == [
        Undecided(
            detector="guard",
            reason=f"judge llama-guard at {fake.host}: verdict matched neither unsafe_when nor safe_when:"
            " 'I cannot assess this conversation becaus'",
        )
    ]


async def test_a_judge_answer_without_a_message_is_undecided(fake: FakeService) -> None:
    fake.reply = Reply({"choices": []})
    scan = await judge_detectors(fake).scan(["guard"], HARMFUL_OUTPUT)
    assert "answered no chat completion (choices:" in scan.undecided[0].reason


async def test_a_slow_judge_is_undecided_while_the_regex_detectors_still_hit(fake: FakeService) -> None:
    fake.reply = Reply(chat("unsafe\nS1"), delay=1.5)
    scan = await judge_detectors(fake, timeout_seconds=0.2).scan(["guard", "secret"], "the key is sk-live-4f9a8c2e7b1d4a6f9e3c5b7a1d2f8e6c")
    assert scan.fired == ["secret"]
    assert scan.undecided == [Undecided(detector="guard", reason=f"judge llama-guard at {fake.host} timed out after 0.2s")]
