"""Actions on targets are counted by adapter, action and result where they run; a drill's actions
(on a drill route) are counted as a drill's, never in production's `stanch_actions` (which the
StanchActionsFailing alert and the dashboard's actions panels read)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig
from temporalio.testing import ActivityEnvironment

from activities.contain import ContainActivities
from activities.metrics import counted_action
from activities.restore import RestoreActivities
from stanch.config.settings import Settings
from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.models.activity_io import ApplyInput, UndoInput
from stanch.targets.registry import TargetRegistry
from stanch.temporal.activity_deps import ActivityDeps

ROUTE = "drill-0a1b2c3d.support-bot"
STANCH_LABELS = ("adapter", "action", "result")


class Counted:
    """An activity environment whose metric meter writes to a buffer the test reads."""

    def __init__(self) -> None:
        self.buffer = MetricBuffer(1_000)
        self.environment = ActivityEnvironment()
        self.environment.metric_meter = Runtime(telemetry=TelemetryConfig(metrics=self.buffer)).metric_meter
        self.updates: list = []

    def counts(self, name: str) -> list[tuple[int, dict]]:
        self.updates += self.buffer.retrieve_updates()
        # The runtime adds its own labels (namespace, task queue, activity type): Stanch's are these.
        return [
            (update.value, {key: value for key, value in update.attributes.items() if key in STANCH_LABELS})
            for update in self.updates
            if update.metric.name == name
        ]

    async def act(self, targets: TargetRegistry, model: str | None, *, fails: bool = False, dry_run: bool = False) -> None:
        async def step() -> None:
            with counted_action(targets, "gateway", "block_output", done="applied", dry_run=dry_run, model=model):
                if fails:
                    raise RuntimeError("the gateway refused")

        if fails:
            with pytest.raises(RuntimeError):
                await self.environment.run(step)
        else:
            await self.environment.run(step)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, gateway_url="http://127.0.0.1:9")  # no gateway there: every action fails


@pytest.fixture
def targets(settings: Settings) -> TargetRegistry:
    return TargetRegistry(settings)


async def test_a_drills_actions_are_counted_as_a_drills_and_never_as_productions(targets: TargetRegistry) -> None:
    counted = Counted()
    await counted.act(targets, ROUTE, fails=True)
    await counted.act(targets, f"gateway:{ROUTE}")
    assert counted.counts("stanch_actions") == []
    applied, failed = {"adapter": "gateway", "action": "block_output", "result": "applied"}, {"result": "failed"}
    assert counted.counts("stanch_drill_actions") == [(1, {**applied, **failed}), (1, applied)]


async def test_productions_actions_are_counted_as_before_and_a_rehearsal_not_at_all(targets: TargetRegistry) -> None:
    counted = Counted()
    await counted.act(targets, "support-bot", fails=True)
    await counted.act(targets, "support-bot")
    await counted.act(targets, None)  # a caller that does not say which model: production's, as it always was
    await counted.act(targets, ROUTE, dry_run=True)
    await counted.act(targets, "support-bot", dry_run=True)
    results = [(value, attributes["result"]) for value, attributes in counted.counts("stanch_actions")]
    assert results == [(1, "failed"), (1, "applied"), (1, "applied")]
    assert {attributes["adapter"] for _, attributes in counted.counts("stanch_actions")} == {"gateway"}
    assert counted.counts("stanch_drill_actions") == []


async def test_the_contain_and_restore_activities_count_a_drill_routes_actions_as_a_drills(
    settings: Settings, targets: TargetRegistry
) -> None:
    counted = Counted()
    deps = ActivityDeps(settings=settings, targets=targets)
    for model in (ROUTE, "support-bot"):
        action = ActionSpec(kind="block_output", target="gateway", params={"pattern": "secret"})
        step = ApplyInput(incident_id="INC-1", stage="contain", index=0, target=TargetRef(model=model), action=action)
        with pytest.raises(ApplicationError):
            await counted.environment.run(ContainActivities(deps).apply_containment, step)
        applied = AppliedAction(kind="block_output", stage="contain", index=0, target=step.target, idempotency_key="INC-1/contain/0")
        with pytest.raises(ApplicationError):
            await counted.environment.run(RestoreActivities(deps).undo_action, UndoInput(incident_id="INC-1", applied=applied))
    failed = {"adapter": "gateway", "action": "block_output", "result": "failed"}
    assert counted.counts("stanch_drill_actions") == [(1, failed), (1, failed)]
    assert counted.counts("stanch_actions") == [(1, failed), (1, failed)]
