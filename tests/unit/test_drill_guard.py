"""A drill's steps stay on its drill route: where a step runs, one of an incident on a drill route
that would go to another target than the gateway (or be a generic HTTP request) fails at once,
never retried, and nothing is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.contain import ContainActivities
from activities.hotfix import HotfixActivities
from activities.restore import RestoreActivities
from activities.rollback import RollbackActivities
from stanch.config.settings import Settings
from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.models.activity_io import ApplyInput, UndoInput
from stanch.targets.registry import TargetRegistry
from stanch.temporal.activity_deps import ActivityDeps

ROUTE = "drill-0a1b2c3d.support-bot"


class Production:
    """A target outside the gateway (as a LiteLLM or Kubernetes one would be): records any call."""

    kind: ClassVar[str] = "http"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def called(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            raise AssertionError(f"{name} reached production")

        return called


@pytest.fixture
def production() -> Production:
    return Production()


@pytest.fixture
def deps(tmp_path: Path, production: Production) -> ActivityDeps:
    settings = Settings(home=tmp_path, gateway_url="http://127.0.0.1:9")
    return ActivityDeps(settings=settings, targets=TargetRegistry(settings, extra={"litellm": production}))  # type: ignore[dict-item]


def step(kind: str, target: str | None, model: str = ROUTE, stage: str = "contain") -> ApplyInput:
    action = ActionSpec(kind=kind, target=target, params={"method": "POST", "url": "https://prod.example/x"})
    return ApplyInput(incident_id="INC-1", stage=stage, index=0, target=TargetRef(model=model), action=action)


async def refused(call: Any, input: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(call, input)
    assert raised.value.type == "DrillOutsideRoute" and raised.value.non_retryable
    return raised.value


async def test_a_drills_step_to_another_target_or_over_http_is_refused_and_nothing_is_sent(
    deps: ActivityDeps, production: Production
) -> None:
    error = await refused(ContainActivities(deps).apply_containment, step("http", "litellm"))
    assert ROUTE in str(error) and "litellm" in str(error)
    await refused(RollbackActivities(deps).apply_rollback, step("http", "litellm", stage="rollback"))
    await refused(HotfixActivities(deps).apply_hotfix, step("http", "litellm", stage="hotfix"))
    await refused(ContainActivities(deps).apply_containment, step("http", None))  # generic HTTP, even "on the gateway"
    applied = AppliedAction(kind="http", stage="contain", index=0, target=TargetRef(adapter="litellm", model=ROUTE), idempotency_key="k")
    await refused(RestoreActivities(deps).undo_action, UndoInput(incident_id="INC-1", applied=applied))
    assert production.calls == []


async def test_a_drills_gateway_step_and_a_production_incidents_step_elsewhere_go_ahead(deps: ActivityDeps, production: Production) -> None:
    # The gateway is asked (and, here, is away): the guard let the drill's own step through.
    with pytest.raises(ApplicationError) as gateway_away:
        await ActivityEnvironment().run(ContainActivities(deps).apply_containment, step("block_prompts", None))
    assert gateway_away.value.type != "DrillOutsideRoute"
    # Not a drill: a step on another target goes to it.
    with pytest.raises(Exception, match="reached production"):
        await ActivityEnvironment().run(ContainActivities(deps).apply_containment, step("http", "litellm", model="support-bot"))
    assert production.calls
