"""verify_on_shadow against a real gateway (in process): it opens the shadow, scores the mirrored
live answers with the verify detectors, passes on enough clean ones, fails naming the harmful
sample by id and detector (never its content), and closes the shadow either way."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.shadow import ShadowActivities
from stanch.gateway.app import create_app
from stanch.models.actions import TargetRef
from stanch.models.shadow import ShadowInput
from stanch.targets.base import TargetError
from stanch.targets.gateway import GatewayTarget
from tests.openai_stub import Stub
from tests.unit.test_gateway import GOOD, LEAK, MODEL, SECRET, chat, upstreams


@pytest.fixture
async def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("STANCH_GATEWAY_SAMPLE_KEY", base64.b64encode(bytes(range(32))).decode())  # shadows need one
    stub = Stub(answers={"bot-v1": GOOD, "bot-v2": LEAK, "safe-v1": "I am the safe model."})
    app = create_app(tmp_path / "gateway.db", upstreams(weight=0), upstream_transport=httpx.ASGITransport(app=stub.app()))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            yield client


def activities(gw: httpx.AsyncClient) -> ShadowActivities:
    target = GatewayTarget("http://gateway", transport=gw._transport)
    deps = SimpleNamespace(targets=SimpleNamespace(get=lambda ref: target))
    return ShadowActivities(deps, poll_seconds=0.02)  # type: ignore[arg-type]


def shadow_input(version: str, timeout: float = 10) -> ShadowInput:
    return ShadowInput(
        incident_id="INC-7",
        target=TargetRef(model=MODEL, version="2"),
        idempotency_key=f"INC-7@run/restore/1/gateway:{MODEL}/shadow/{version}",
        version=version,
        detectors=["secret"],
        clean_requests=3,
        sample_rate=1.0,
        limit=12,
        timeout_seconds=timeout,
    )


async def live_traffic(gw: httpx.AsyncClient, requests: int) -> None:
    await asyncio.sleep(0.1)  # the shadow opens first
    for _ in range(requests):
        await chat(gw)
        await asyncio.sleep(0.02)


async def test_a_clean_fix_passes_after_enough_clean_mirrored_answers_and_the_shadow_closes(gw: httpx.AsyncClient) -> None:
    result, _ = await asyncio.gather(ActivityEnvironment().run(activities(gw).verify_on_shadow, shadow_input("1")), live_traffic(gw, 4))
    assert result.passed and result.clean == 3 and not result.failing
    page = (await gw.get(f"/admin/shadows/{result.shadow_id}")).json()
    assert page["shadow"]["open"] is False and page["answers"] == []  # closed, nothing kept


async def test_a_leaking_fix_fails_naming_the_sample_and_the_detector_never_the_content(gw: httpx.AsyncClient) -> None:
    result, _ = await asyncio.gather(ActivityEnvironment().run(activities(gw).verify_on_shadow, shadow_input("2")), live_traffic(gw, 2))
    assert not result.passed and [s.detectors for s in result.failing] == [["secret"]]
    failing = result.failing[0].id
    assert SECRET not in result.model_dump_json()
    assert result.read_at == f"GET http://gateway/admin/shadows/{result.shadow_id}?ids={failing}"
    kept = (await gw.get(f"/admin/shadows/{result.shadow_id}", params={"ids": [failing]})).json()
    assert kept["shadow"]["open"] is False and SECRET in kept["answers"][0]["answer"]  # there for a responder


async def test_too_little_traffic_before_the_timeout_fails(gw: httpx.AsyncClient) -> None:
    result = await ActivityEnvironment().run(activities(gw).verify_on_shadow, shadow_input("1", timeout=0.3))
    assert not result.passed and result.timed_out and result.clean == 0
    assert "only 0 of 3 clean mirrored requests before the shadow's timeout passed" in result.summary()


class FakeGateway:
    """A gateway target whose mirrored answers are given: to test what the activity makes of them."""

    def __init__(self, answers: list[dict[str, Any]], fail_reading: bool = False) -> None:
        self.answers, self.fail_reading = answers, fail_reading
        self.closed_keeping: list[list[str]] = []

    async def open_shadow(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"shadow_id": "sh-1"}

    async def shadow_answers(self, shadow_id: str, after: int = 0) -> dict[str, Any]:
        if self.fail_reading:
            raise TargetError("the gateway answered 502", retryable=True)
        page = [a for a in self.answers if a["seq"] > after]
        return {"shadow": {"mirrored": len(self.answers)}, "answers": page}

    async def close_shadow(self, shadow_id: str, idempotency_key: str, keep: list[str]) -> dict[str, Any]:
        self.closed_keeping.append(keep)
        return {}

    def shadow_samples_url(self, shadow_id: str, sample_ids: list[str]) -> str:
        return f"GET http://gateway/admin/shadows/{shadow_id}?ids={','.join(sample_ids)}"


def on(target: FakeGateway) -> ShadowActivities:
    deps = SimpleNamespace(targets=SimpleNamespace(get=lambda ref: target))
    return ShadowActivities(deps, poll_seconds=0.01)  # type: ignore[arg-type]


def unreadable(seq: int) -> dict[str, Any]:
    return {"id": f"sh-1-{seq}", "seq": seq, "outcome": "unreadable", "prompt": "", "answer": "", "at": ""}


async def test_answers_the_gateway_cannot_open_are_never_clean_and_the_human_is_told_why() -> None:
    target = FakeGateway([unreadable(seq) for seq in (1, 2, 3)])
    result = await ActivityEnvironment().run(on(target).verify_on_shadow, shadow_input("1"))
    assert not result.passed and result.clean == 0 and result.unreadable == 3 and not result.timed_out
    assert "sample key (STANCH_GATEWAY_SAMPLE_KEY or STANCH_GATEWAY_SAMPLE_KEY_FILE) was rotated or is missing" in result.summary()
    assert target.closed_keeping == [[]]


async def test_a_retry_remembers_the_harmful_answer_the_last_attempt_saw_and_fails_at_once() -> None:
    target = FakeGateway([])  # nothing new comes in: the clean answers it would need never arrive either
    env = ActivityEnvironment()
    seen = {"after": 4, "clean": 2, "mirrored": 4, "deadline": time.time() + 60, "failing": [{"id": "sh-1-3", "detectors": ["secret"]}]}
    env.info = dataclasses.replace(env.info, heartbeat_details=[seen])
    result = await env.run(on(target).verify_on_shadow, shadow_input("1"))
    assert not result.passed and [(s.id, s.detectors) for s in result.failing] == [("sh-1-3", ["secret"])]
    assert target.closed_keeping == [["sh-1-3"]] and "sh-1-3" in result.read_at


async def test_the_harmful_answers_are_in_every_heartbeat() -> None:
    leak = {"id": "sh-1-1", "seq": 1, "outcome": "answered", "prompt": "the key?", "answer": f"It is {SECRET}", "at": ""}
    env, beats = ActivityEnvironment(), list[Any]()
    env.on_heartbeat = beats.append
    await env.run(on(FakeGateway([leak])).verify_on_shadow, shadow_input("1"))
    assert beats[-1]["failing"] == [{"id": "sh-1-1", "detectors": ["secret"]}] and SECRET not in str(beats)


async def test_the_shadow_is_closed_when_the_activity_fails() -> None:
    target = FakeGateway([], fail_reading=True)
    with pytest.raises(ApplicationError):
        await ActivityEnvironment().run(on(target).verify_on_shadow, shadow_input("1"))
    assert target.closed_keeping == [[]]
