"""Several incidents rolling back one MLflow alias (issue 11, item 4), against an in-memory
registry speaking the REST calls the target uses: the alias serves the newest hold, a restore
releases only its own, and the last one brings back the version served before the first.
(tests/e2e/test_mlflow_holds.py runs the same story on a real `mlflow server`.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.targets.base import ApplyResult, TargetError
from stanch.targets.mlflow import MlflowTarget

NAME = "support-bot"
API = "/api/2.0/mlflow"
ORDERS = pytest.mark.parametrize("order", [("A", "B"), ("B", "A")], ids=["first-in-first-out", "last-in-first-out"])


class FakeRegistry:
    """One registered model: versions 1..3, their tags, the model's tags and aliases."""

    def __init__(self, champion: str = "3") -> None:
        self.aliases = {"champion": champion}
        self.model_tags: dict[str, str] = {}
        self.version_tags: dict[str, dict[str, str]] = {v: {} for v in ("1", "2", "3")}

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix(API)
        body = json.loads(request.content) if request.content else {}
        if path == "/registered-models/get":
            model = {
                "name": NAME,
                "aliases": [{"alias": a, "version": v} for a, v in self.aliases.items()],
                "tags": [{"key": k, "value": v} for k, v in self.model_tags.items()],
            }
            return httpx.Response(200, json={"registered_model": model})
        if path == "/model-versions/search":
            versions = [
                {"name": NAME, "version": v, "status": "READY", "tags": [{"key": k, "value": x} for k, x in tags.items()]}
                for v, tags in self.version_tags.items()
            ]
            return httpx.Response(200, json={"model_versions": versions})
        if path == "/registered-models/alias":
            self.aliases[body["alias"]] = body["version"]
            return httpx.Response(200, json={})
        if path == "/registered-models/set-tag":
            self.model_tags[body["key"]] = body["value"]
            return httpx.Response(200, json={})
        if path == "/model-versions/set-tag":
            self.version_tags[body["version"]][body["key"]] = body["value"]
            return httpx.Response(200, json={})
        return httpx.Response(404, json={"error_code": "ENDPOINT_NOT_FOUND", "message": path})


def target(registry: FakeRegistry) -> MlflowTarget:
    config = MlflowTarget.Config(tracking_uri="http://mlflow.test", alias="champion")
    return MlflowTarget(config, name="registry", base=Path("."), env={}, transport=httpx.MockTransport(registry.handle))


def rollback(**params: Any) -> ActionSpec:
    return ActionSpec(kind="rollback_alias", params=params)


async def roll_back(registry: FakeRegistry, incident: str, **params: Any) -> AppliedAction:
    key = f"{incident}@run1/rollback/0/registry:{NAME}"
    outcome: ApplyResult = await target(registry).apply(NAME, rollback(**params), key, incident, holder=f"{incident}@run1")
    return AppliedAction(
        kind="rollback_alias",
        stage="rollback",
        index=0,
        target=TargetRef(adapter="registry", model=NAME),
        idempotency_key=key,
        result=outcome.result,
        inverse=outcome.inverse,
        holder=f"{incident}@run1",
    )


async def restore(registry: FakeRegistry, applied: AppliedAction) -> ApplyResult:
    return await target(registry).undo(applied, f"{applied.idempotency_key}/undo")


@ORDERS
async def test_two_incidents_reporting_one_bad_version_restored_in_either_order_serve_it_again_only_after_both(
    order: tuple[str, str],
) -> None:
    registry = FakeRegistry()
    applied = {"A": await roll_back(registry, "A", bad_version="3")}
    # B reports the same bad version: it joins A's rollback instead of being refused.
    applied["B"] = await roll_back(registry, "B", bad_version="3")
    assert registry.aliases["champion"] == "2" and applied["B"].result["holder"] == "B@run1"

    first, last = order
    released = await restore(registry, applied[first])
    assert registry.aliases["champion"] == "2", f"{last} still holds the rollback"
    assert released.result["still_held_by"] == [f"{last}@run1"]
    assert registry.version_tags["3"]["stanch.status"] == "rolled_back", f"{last} still rolls back from version 3"
    await restore(registry, applied[last])
    assert registry.aliases["champion"] == "3" and registry.version_tags["3"]["stanch.status"] == "restored"


@ORDERS
async def test_a_second_rollback_from_the_served_version_is_served_while_held_and_the_last_release_goes_back_before_both(
    order: tuple[str, str],
) -> None:
    registry = FakeRegistry()
    applied = {"A": await roll_back(registry, "A")}  # 3 -> 2
    applied["B"] = await roll_back(registry, "B")  # 2 -> 1: B found harm on what A served
    assert registry.aliases["champion"] == "1"

    first, last = order
    await restore(registry, applied[first])
    assert registry.aliases["champion"] == applied[last].result["version"], f"{last}'s rollback is served while it holds"
    await restore(registry, applied[last])
    assert registry.aliases["champion"] == "3", "the version served before the first rollback"


async def test_a_restore_repeated_changes_nothing_and_a_hand_move_is_not_clobbered() -> None:
    registry = FakeRegistry()
    a = await roll_back(registry, "A", bad_version="3")
    b = await roll_back(registry, "B", bad_version="3")
    first = await restore(registry, a)
    assert (await restore(registry, a)).result == first.result
    assert registry.aliases["champion"] == "2"
    registry.aliases["champion"] = "1"  # someone moved it by hand
    with pytest.raises(TargetError, match="someone moved it since") as refused:
        await restore(registry, b)
    assert not refused.value.retryable and registry.aliases["champion"] == "1"


async def test_a_bad_version_no_hold_rolled_back_from_is_still_refused() -> None:
    registry = FakeRegistry(champion="2")
    with pytest.raises(TargetError, match="not the reported bad version 3"):
        await roll_back(registry, "A", bad_version="3")


async def test_a_rollback_recorded_before_holders_is_released_as_before() -> None:
    registry = FakeRegistry()
    applied = await roll_back(registry, "A", bad_version="3")
    # What the adapter recorded before holds: no holder, base or sequence in the ledger tag.
    for key, value in list(registry.model_tags.items()):
        if key.startswith("stanch.applied."):
            record = json.loads(value)
            registry.model_tags[key] = json.dumps({k: v for k, v in record.items() if k not in ("holder", "base", "seq")})
    legacy = applied.model_copy(update={"holder": None})
    await restore(registry, legacy)
    assert registry.aliases["champion"] == "3"
