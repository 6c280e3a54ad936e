"""verify_on_shadow against a real gateway (in process): it opens the shadow, scores the mirrored
live answers with the verify detectors, passes on enough clean ones, fails naming the harmful
sample by id and detector (never its content), and closes the shadow either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.shadow import ShadowActivities
from stanch.gateway.app import create_app
from stanch.models.actions import TargetRef
from stanch.models.shadow import ShadowInput
from stanch.targets.gateway import GatewayTarget
from tests.openai_stub import Stub
from tests.unit.test_gateway import GOOD, LEAK, MODEL, SECRET, chat, upstreams


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
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
