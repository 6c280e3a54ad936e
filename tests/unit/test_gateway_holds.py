"""Overlapping incidents on one gateway model (issue 11, item 4): each protection is held by the
incident occurrence that put it in place, the state is the union of what is held, an undo
releases its own hold, and the last release brings back the state from before the first."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from stanch.gateway import store as gateway_store
from stanch.gateway.store import GatewayStore
from tests.openai_stub import Stub
from tests.unit.test_gateway import GOOD, LEAK, MODEL, chat, running_gateway, state, upstreams

ORDERS = pytest.mark.parametrize("order", [("A", "B"), ("B", "A")], ids=["first-in-first-out", "last-in-first-out"])


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    stub = Stub(answers={"bot-v1": GOOD, "bot-v2": LEAK, "safe-v1": GOOD})
    async with running_gateway(tmp_path / "gateway.db", stub, upstreams()) as client:
        yield client


async def apply(gw: httpx.AsyncClient, incident: str, kind: str, **params: Any) -> dict[str, Any]:
    body = {
        "idempotency_key": f"{incident}@run1/contain/0/gateway:{MODEL}",
        "incident_id": incident,
        "holder": f"{incident}@run1",
        "model": MODEL,
        "action": {"kind": kind, "params": params},
    }
    response = await gw.post("/admin/apply", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def undo(gw: httpx.AsyncClient, incident: str, *, holder: bool = True) -> httpx.Response:
    key = f"{incident}@run1/contain/0/gateway:{MODEL}"
    body = {"idempotency_key": key, "undo_key": f"{key}/undo", **({"holder": f"{incident}@run1"} if holder else {})}
    return await gw.post("/admin/undo", json=body)


def without_holds(model_state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model_state.items() if k != "holds"}


@ORDERS
async def test_two_incidents_on_one_feature_restored_in_either_order_leave_it_as_before_both(
    gw: httpx.AsyncClient, order: tuple[str, str]
) -> None:
    before = await state(gw)
    await apply(gw, "A", "disable_feature", feature="web-search")
    b = await apply(gw, "B", "disable_feature", feature="web-search")
    assert b["result"]["held_by"] == ["A@run1", "B@run1"]

    first, last = order
    assert (await undo(gw, first)).status_code == 200
    refused = await chat(gw, "search the web", headers={"x-feature": "web-search"})
    assert refused.status_code == 503, f"{last} still holds web-search disabled"
    assert refused.json()["error"]["incident"] == last
    assert [h["holder"] for h in (await state(gw))["holds"]] == [f"{last}@run1"]

    assert (await undo(gw, last)).status_code == 200
    assert await state(gw) == before
    assert (await chat(gw, "search the web", headers={"x-feature": "web-search"})).status_code == 200


@ORDERS
async def test_two_pins_the_newest_is_served_and_the_last_release_brings_back_the_release(
    gw: httpx.AsyncClient, order: tuple[str, str]
) -> None:
    before = await state(gw)
    await apply(gw, "A", "rollback_to_previous", bad_version="2")
    await apply(gw, "B", "rollback_to_previous", bad_version="2")
    assert (await state(gw))["served_version"] == "1"

    first, last = order
    await undo(gw, first)
    after_first = await state(gw)
    assert (after_first["pinned_version"], after_first["served_version"]) == ("1", "1"), f"{last} still pins version 1"
    await undo(gw, last)
    assert await state(gw) == before


async def test_different_pins_the_newest_holders_wins_until_released(gw: httpx.AsyncClient) -> None:
    body = {"kind": "register_version", "params": {"version": "3", "upstream_model": "bot-v1"}}
    await gw.post("/admin/apply", json={"idempotency_key": "ft", "incident_id": "C", "model": MODEL, "action": body})
    await apply(gw, "A", "rollback_to_previous", bad_version="3")  # pins 2
    await apply(gw, "B", "rollback_to_previous", bad_version="2")  # pins 1
    assert (await state(gw))["pinned_version"] == "1"
    await undo(gw, "B")
    assert (await state(gw))["pinned_version"] == "2", "A's pin is served again once B lets go"
    await undo(gw, "A")
    assert (await state(gw))["pinned_version"] is None


@ORDERS
@pytest.mark.parametrize(
    ("kind", "params", "field", "held"),
    [
        ("switch_to_fallback", {}, "fallback_active", True),
        ("disable_version", {"version": "2"}, "served_version", "1"),
        ("block_prompts", {"patterns": ["(?i)api key"]}, "blocked_prompts", None),
    ],
)
async def test_fallback_version_and_blocks_are_held_until_the_last_release(
    gw: httpx.AsyncClient, order: tuple[str, str], kind: str, params: dict[str, Any], field: str, held: Any
) -> None:
    before = await state(gw)
    await apply(gw, "A", kind, **params)
    await apply(gw, "B", kind, **params)
    first, last = order
    await undo(gw, first)
    now = await state(gw)
    if held is None:
        assert [b["holder"] for b in now[field]] == [f"{last}@run1"]
        assert (await chat(gw, "what is the api key?")).status_code == 403
    else:
        assert now[field] == held
    await undo(gw, last)
    assert await state(gw) == before


async def test_the_same_key_twice_is_one_hold(gw: httpx.AsyncClient) -> None:
    before = await state(gw)
    await apply(gw, "A", "disable_feature", feature="web-search")
    again = await apply(gw, "A", "disable_feature", feature="web-search")
    assert again["replayed"] is True
    assert len((await state(gw))["holds"]) == 1
    assert (await undo(gw, "A")).status_code == 200
    assert await state(gw) == before


async def test_an_undo_naming_another_holder_is_refused_and_one_naming_none_works_as_before(gw: httpx.AsyncClient) -> None:
    await apply(gw, "A", "disable_feature", feature="web-search")
    key = f"A@run1/contain/0/gateway:{MODEL}"
    refused = await gw.post("/admin/undo", json={"idempotency_key": key, "undo_key": f"{key}/undo", "holder": "B@run1"})
    assert refused.status_code == 409 and "held by 'A@run1', not 'B@run1'" in refused.json()["detail"]
    assert (await state(gw))["features"]["web-search"] is False
    assert (await undo(gw, "A", holder=False)).status_code == 200
    assert (await state(gw))["features"]["web-search"] is True


async def test_a_feature_disabled_before_any_incident_stays_disabled_after_both(gw: httpx.AsyncClient) -> None:
    store: GatewayStore = gw._transport.app.state.store  # type: ignore[attr-defined]
    with store.transaction() as db:
        db.execute("UPDATE features SET enabled = 0 WHERE model = ? AND name = 'web-search'", (MODEL,))
    before = await state(gw)
    await apply(gw, "A", "disable_feature", feature="web-search")
    await apply(gw, "B", "disable_feature", feature="web-search")
    await undo(gw, "A")
    await undo(gw, "B")
    assert await state(gw) == before and before["features"]["web-search"] is False


async def test_an_undo_after_the_demo_reset_dropped_its_hold_changes_nothing(gw: httpx.AsyncClient) -> None:
    await apply(gw, "A", "disable_feature", feature="web-search")
    await gw.post("/admin/reset")
    store: GatewayStore = gw._transport.app.state.store  # type: ignore[attr-defined]
    with store.transaction() as db:  # switched off since, by someone other than Stanch
        db.execute("UPDATE features SET enabled = 0 WHERE model = ? AND name = 'web-search'", (MODEL,))
    before = await state(gw)
    undone = await undo(gw, "A")
    assert undone.status_code == 200 and undone.json()["result"]["restored"]["note"] == "no longer held"
    assert await state(gw) == before
