"""Several incidents on one object of a generic HTTP control plane (issue 11, item 4). The
control plane keeps no holders; with the target's `holds_file`, Stanch keeps them: an undo is
held back while another incident holds the object, and the last one puts back what was there
before the first. Without it the adapter cannot know (documented), and sends every undo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.targets.http import HttpTarget
from stanch.targets.steps import render

ORDERS = pytest.mark.parametrize("order", [("A", "B"), ("B", "A")], ids=["first-in-first-out", "last-in-first-out"])


class ControlPlane:
    """A LiteLLM-like key that can be blocked, and a canary weight that can be read and set."""

    def __init__(self) -> None:
        self.blocked = False
        self.canary = 10
        self.sent: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.sent.append(f"{request.method} {request.url.path}")
        if request.url.path == "/key/block":
            self.blocked = True
        elif request.url.path == "/key/unblock":
            self.blocked = False
        elif request.url.path == "/canary" and request.method == "PUT":
            self.canary = body["percent"]
        return httpx.Response(200, json={"percent": self.canary, "blocked": self.blocked})


BLOCK = {
    "hold": "litellm key {model}-widget",  # the body names the incident: the hold names the object
    "method": "POST",
    "url": "/key/block",
    "body": {"key": "{model}-widget", "reason": "stanch {incident_id}"},
    "undo": {"method": "POST", "url": "/key/unblock", "body": {"key": "{model}-widget"}},
}
CANARY_OFF = {  # no hold name: the same change request is the same object
    "method": "PUT",
    "url": "/canary",
    "body": {"percent": 0},
    "before": [{"method": "GET", "url": "/canary", "capture": {"percent": "/percent"}}],
    "undo": {"method": "PUT", "url": "/canary", "body": {"percent": "{before.percent}"}},
}


def target(plane: ControlPlane, tmp_path: Path, *, holds: bool = True) -> HttpTarget:
    config = HttpTarget.Config(base_url="http://plane.test", holds_file=Path("litellm.stanch-holds.json") if holds else None)
    return HttpTarget(config, name="litellm", base=tmp_path, env={}, transport=httpx.MockTransport(plane.handle))


async def apply(http: HttpTarget, incident: str, params: dict[str, Any]) -> AppliedAction:
    key = f"{incident}@run1/contain/0/litellm:support-bot"
    action = ActionSpec(kind="http", params=render(params, {"model": "support-bot", "incident_id": incident}))
    outcome = await http.apply("support-bot", action, key, incident, holder=f"{incident}@run1")
    return AppliedAction(
        kind="http",
        stage="contain",
        index=0,
        target=TargetRef(adapter="litellm", model="support-bot"),
        idempotency_key=key,
        params=action.params,
        result=outcome.result,
        inverse=outcome.inverse,
        holder=f"{incident}@run1",
    )


@ORDERS
async def test_two_incidents_blocking_one_key_unblock_it_only_when_the_last_is_restored(tmp_path: Path, order: tuple[str, str]) -> None:
    plane = ControlPlane()
    http = target(plane, tmp_path)
    applied = {incident: await apply(http, incident, BLOCK) for incident in ("A", "B")}
    assert applied["B"].result["held_by"] == ["A@run1", "B@run1"]

    first, last = order
    held = await http.undo(applied[first], f"{first}/undo")
    assert held.result == {"left_in_place": True, "object": "litellm key support-bot-widget", "held_by": [f"{last}@run1"]}
    assert plane.blocked and "POST /key/unblock" not in plane.sent, f"{last} still holds the key blocked"
    await http.undo(applied[last], f"{last}/undo")
    assert not plane.blocked and plane.sent.count("POST /key/unblock") == 1
    again = await http.undo(applied[last], f"{last}/undo")
    assert again.replayed and plane.sent.count("POST /key/unblock") == 1


@ORDERS
async def test_two_incidents_on_one_canary_put_back_the_weight_from_before_both(tmp_path: Path, order: tuple[str, str]) -> None:
    plane = ControlPlane()
    http = target(plane, tmp_path)
    applied = {incident: await apply(http, incident, CANARY_OFF) for incident in ("A", "B")}
    assert applied["B"].inverse and applied["B"].inverse["captured"] == {"percent": 0}, "B read A's protection as its before"

    first, last = order
    await http.undo(applied[first], f"{first}/undo")
    assert plane.canary == 0, f"{last} still holds the canary off"
    await http.undo(applied[last], f"{last}/undo")
    assert plane.canary == 10, "the weight from before the first incident, not the one the first left"


async def test_without_a_holds_file_every_undo_is_sent_as_recorded(tmp_path: Path) -> None:
    plane = ControlPlane()
    http = target(plane, tmp_path, holds=False)
    a, b = await apply(http, "A", BLOCK), await apply(http, "B", BLOCK)
    await http.undo(a, "A/undo")
    assert not plane.blocked, "the documented limit: a control plane that keeps no holders cannot be told B still needs it"
    await http.undo(b, "B/undo")
    assert not (tmp_path / "litellm.stanch-holds.json").exists()


async def test_an_action_applied_before_holds_were_kept_is_not_undone_while_another_holds_its_object(tmp_path: Path) -> None:
    plane = ControlPlane()
    before_holds = await apply(target(plane, tmp_path, holds=False), "A", BLOCK)
    http = target(plane, tmp_path)
    b = await apply(http, "B", BLOCK)
    held = await http.undo(before_holds, "A/undo")
    assert held.result["left_in_place"] and plane.blocked
    await http.undo(b, "B/undo")
    assert not plane.blocked
