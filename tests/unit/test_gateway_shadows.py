"""Shadows: a sample of live traffic mirrored to the fixed configuration before restore. Users'
answers still come from the contained path, unchanged and on time; the mirror gets the fix's
hotfixes but none of the incidents' containment; the sample rate and the limit hold."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from stanch.gateway.app import create_app
from tests.openai_stub import Stub
from tests.unit.test_gateway import EMAIL, GOOD, LEAK, MODEL, SECRET, apply, chat, upstreams


class SlowFor(httpx.AsyncBaseTransport):
    """The stub upstream, taking `delay` seconds to answer one upstream model."""

    def __init__(self, inner: httpx.AsyncBaseTransport, model: str, delay: float) -> None:
        self.inner, self.model, self.delay = inner, model, delay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if f'"{self.model}"' in request.content.decode():
            await asyncio.sleep(self.delay)
        return await self.inner.handle_async_request(request)


KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(autouse=True)
def sealing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway opens shadows only with a key to seal the mirrored users' text."""
    monkeypatch.setenv("STANCH_GATEWAY_SAMPLE_KEY", KEY)


@pytest.fixture
def stub() -> Stub:
    return Stub(answers={"bot-v1": GOOD, "bot-v2": LEAK, "safe-v1": "I am the safe model."})


async def gateway(tmp_path: Path, stub: Stub, weight: int, slow_v2: float = 0.0) -> AsyncIterator[httpx.AsyncClient]:
    transport = SlowFor(httpx.ASGITransport(app=stub.app()), "bot-v2", slow_v2)
    app = create_app(tmp_path / "gateway.db", upstreams(weight=weight), upstream_transport=transport)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            yield client


@pytest.fixture
async def gw(tmp_path: Path, stub: Stub) -> AsyncIterator[httpx.AsyncClient]:
    """v2 (the leaking update) serves everyone; the shadow mirrors to v2 as well."""
    async for client in gateway(tmp_path, stub, weight=100):
        yield client


async def open_shadow(gw: httpx.AsyncClient, key: str = "INC-7/restore/shadow/0", **options: Any) -> dict[str, Any]:
    body = {"idempotency_key": key, "incident_id": "INC-7", "model": MODEL, "version": "2", **options}
    response = await gw.post("/admin/shadows", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def mirrored(gw: httpx.AsyncClient, shadow_id: str, count: int, wait: float = 10) -> list[dict[str, Any]]:
    """The shadow's answers once `count` came back (mirrors run in the background), or after `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        page = (await gw.get(f"/admin/shadows/{shadow_id}", params={"limit": 200})).json()
        if page["shadow"]["mirrored"] >= count or time.monotonic() > deadline:
            return page["answers"]
        await asyncio.sleep(0.02)


async def test_the_mirror_skips_containment_but_applies_the_hotfixes_and_the_user_answer_is_unchanged(
    gw: httpx.AsyncClient, stub: Stub
) -> None:
    await apply(gw, "INC-7/contain/0", "block_outputs", patterns=[r"jane\.doe@"])
    await apply(gw, "INC-7/hotfix/0", "add_guardrail", patterns=["sk-live-[A-Za-z0-9]{8,}"])
    await apply(gw, "INC-7/hotfix/1", "set_system_prompt", prompt="Never share credentials.")
    before = await chat(gw)
    shadow = await open_shadow(gw, sample_rate=1.0, limit=5)

    after = await chat(gw, stream=True)  # a streamed request is mirrored whole
    again = await chat(gw)

    assert before.status_code == again.status_code == 403 and before.json() == again.json()  # still the contained path
    assert "content_blocked" in after.text and EMAIL not in after.text
    answers = await mirrored(gw, shadow["shadow_id"], 2)
    assert len(answers) == 2
    for answer in answers:
        assert answer["outcome"] == "answered"
        assert SECRET not in answer["answer"] and "[redacted]" in answer["answer"]  # the guardrail hotfix
        assert EMAIL in answer["answer"]  # no incident's block: what restore would leave serves this
        assert answer["prompt"] == "What is the API key?"
    upstream = [r["body"] for r in stub.received if r["body"]["messages"][0] == {"role": "system", "content": "Never share credentials."}]
    assert len(upstream) == 5 and sum(body.get("stream") is False for body in upstream) == 2  # three users' + two mirrors, sent whole


async def test_a_slow_fixed_version_never_delays_the_user(tmp_path: Path, stub: Stub) -> None:
    async for gw in gateway(tmp_path, stub, weight=0, slow_v2=1.5):  # users get v1; the mirror's v2 takes 1.5 s
        shadow = await open_shadow(gw, sample_rate=1.0, limit=5)
        started = time.monotonic()
        answer = await chat(gw)
        took = time.monotonic() - started
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == GOOD
        assert took < 1.0, f"the user waited {took:.2f} s for the mirror"
        answers = await mirrored(gw, shadow["shadow_id"], 1)
        assert [a["answer"] for a in answers] == [LEAK]


async def test_the_sample_rate_and_the_limit_hold(gw: httpx.AsyncClient) -> None:
    sampled = await open_shadow(gw, "INC-7/restore/shadow/rate", sample_rate=0.3, limit=1000)
    for _ in range(60):
        await chat(gw, "How do I reset my router?")
    rate_answers = await mirrored(gw, sampled["shadow_id"], 60, wait=0.5)
    assert 4 <= len(rate_answers) <= 36, len(rate_answers)  # 18 expected; outside this, 1 run in millions

    await gw.post(f"/admin/shadows/{sampled['shadow_id']}/close", json={"idempotency_key": "close-rate"})
    limited = await open_shadow(gw, "INC-7/restore/shadow/limit", sample_rate=1.0, limit=3)
    for _ in range(6):
        await chat(gw, "How do I reset my router?")
    answers = await mirrored(gw, limited["shadow_id"], 6, wait=0.5)
    assert len(answers) == 3 and [a["seq"] for a in answers] == [1, 2, 3]


async def test_probes_are_not_mirrored_and_an_open_is_idempotent(gw: httpx.AsyncClient) -> None:
    first = await open_shadow(gw, sample_rate=1.0, limit=5)
    assert await open_shadow(gw, sample_rate=0.1, limit=1) == first  # the same key: the same shadow
    await chat(gw, headers={"x-stanch-probe": "1"})
    await chat(gw, headers={"x-stanch-version": "2"})
    await asyncio.sleep(0.1)
    assert (await gw.get(f"/admin/shadows/{first['shadow_id']}")).json()["shadow"]["mirrored"] == 0


async def test_closing_stops_mirroring_and_keeps_only_the_failing_answers_named(gw: httpx.AsyncClient) -> None:
    shadow = await open_shadow(gw, sample_rate=1.0, limit=10)
    sid = shadow["shadow_id"]
    for _ in range(3):
        await chat(gw)
    answers = await mirrored(gw, sid, 3)
    failing = answers[1]["id"]
    closed = await gw.post(f"/admin/shadows/{sid}/close", json={"idempotency_key": "INC-7/restore/shadow/0/close", "keep": [failing]})
    assert closed.status_code == 200 and closed.json()["open"] is False
    await chat(gw)
    await asyncio.sleep(0.1)
    page = (await gw.get(f"/admin/shadows/{sid}", params={"ids": [failing]})).json()
    assert [a["id"] for a in page["answers"]] == [failing] and SECRET in page["answers"][0]["answer"]
    assert page["shadow"]["mirrored"] == 1  # the others are deleted, and nothing new came in


async def test_a_shadow_on_an_unknown_version_is_refused_naming_it(gw: httpx.AsyncClient) -> None:
    body = {"idempotency_key": "k", "incident_id": "INC-7", "model": MODEL, "version": "9"}
    response = await gw.post("/admin/shadows", json=body)
    assert response.status_code == 422 and "no version '9'" in response.json()["detail"]


async def test_mirrored_answers_are_sealed_at_rest(tmp_path: Path, stub: Stub) -> None:
    async for gw in gateway(tmp_path, stub, weight=100):
        shadow = await open_shadow(gw, sample_rate=1.0, limit=5)
        await chat(gw)
        answers = await mirrored(gw, shadow["shadow_id"], 1)
        assert SECRET in answers[0]["answer"] and answers[0]["prompt"] == "What is the API key?"  # read back through the admin API
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        rows = db.execute("SELECT prompt, answer, sealed FROM shadow_answers").fetchall()
    assert rows and all(prompt == "" and answer == "" and sealed and SECRET.encode() not in sealed for prompt, answer, sealed in rows)


async def test_without_a_sealing_key_a_shadow_is_refused_naming_the_settings(
    tmp_path: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STANCH_GATEWAY_SAMPLE_KEY")
    async for gw in gateway(tmp_path, stub, weight=100):
        body = {"idempotency_key": "k", "incident_id": "INC-7", "model": MODEL, "version": "2"}
        response = await gw.post("/admin/shadows", json=body)
        assert response.status_code == 409
        assert "STANCH_GATEWAY_SAMPLE_KEY" in response.json()["detail"] and "STANCH_GATEWAY_SAMPLE_KEY_FILE" in response.json()["detail"]


async def test_an_answer_sealed_under_another_key_reads_back_unreadable_never_answered(
    tmp_path: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for gw in gateway(tmp_path, stub, weight=100):
        shadow = await open_shadow(gw, sample_rate=1.0, limit=5)
        await chat(gw)
        assert len(await mirrored(gw, shadow["shadow_id"], 1)) == 1
    monkeypatch.setenv("STANCH_GATEWAY_SAMPLE_KEY", base64.b64encode(bytes(32)).decode())  # the key rotated
    async for gw in gateway(tmp_path, stub, weight=100):
        [answer] = (await gw.get(f"/admin/shadows/{shadow['shadow_id']}")).json()["answers"]
        assert answer["outcome"] == "unreadable" and answer["answer"] == "" and answer["prompt"] == ""


async def test_a_shadow_nobody_closed_expires_after_a_day_and_its_users_text_goes(tmp_path: Path, stub: Stub) -> None:
    async for gw in gateway(tmp_path, stub, weight=100):
        shadow = await open_shadow(gw, sample_rate=1.0, limit=10)
        await chat(gw)
        assert len(await mirrored(gw, shadow["shadow_id"], 1)) == 1
        with sqlite3.connect(tmp_path / "gateway.db") as db:  # its worker died a day and a minute ago
            db.execute("UPDATE shadows SET opened_at = ?", ((datetime.now(UTC) - timedelta(days=1, minutes=1)).isoformat(),))
        await chat(gw)  # live traffic finds it expired: not mirrored, and the gateway closes it
        await asyncio.sleep(0.1)
        page = (await gw.get(f"/admin/shadows/{shadow['shadow_id']}")).json()
        assert page["shadow"]["open"] is False and page["shadow"]["mirrored"] == 0 and page["answers"] == []


async def test_bisections_replays_are_not_mirrored_and_the_mirror_gets_the_platforms_prompt_and_guardrails(
    gw: httpx.AsyncClient, stub: Stub
) -> None:
    deployed = {"model": MODEL, "version": "1", "system_prompt": "You are the support bot.", "guardrails": ["sk-live-[A-Za-z0-9]{8,}"]}
    assert (await gw.post("/admin/deploy", json=deployed)).status_code == 200
    await apply(gw, "INC-7/hotfix/1", "set_system_prompt", prompt="Never share credentials.")
    shadow = await open_shadow(gw, sample_rate=1.0, limit=5)

    await chat(gw, headers={"x-stanch-deployment": "1"})  # another incident's bisection replaying change 1
    await asyncio.sleep(0.1)
    assert (await gw.get(f"/admin/shadows/{shadow['shadow_id']}")).json()["shadow"]["mirrored"] == 0

    await chat(gw)
    [answer] = await mirrored(gw, shadow["shadow_id"], 1)
    assert SECRET not in answer["answer"] and "[redacted]" in answer["answer"]  # the platform's guardrail held
    mirror = [r["body"] for r in stub.received if r["body"].get("stream") is False][-1]
    assert mirror["messages"][:2] == [
        {"role": "system", "content": "Never share credentials."},
        {"role": "system", "content": "You are the support bot."},
    ]
