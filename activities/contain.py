"""Contain: limit harm now (kill switches, blocked prompts and outputs, restricted endpoints)."""

from __future__ import annotations

from temporalio import activity

from activities.drill_guard import refuse_outside_drill_route
from activities.metrics import counted_step
from stanch.models.actions import AppliedAction
from stanch.models.activity_io import ApplyInput
from stanch.targets.base import TargetError
from stanch.targets.steps import apply_step, step_target
from stanch.temporal.activity_deps import ActivityDeps, as_application_error


class ContainActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="apply_containment")
    async def apply_containment(self, input: ApplyInput) -> AppliedAction:
        activity.logger.info("containing %s: %s", input.target, input.action.kind)
        refuse_outside_drill_route(self.deps.targets, step_target(input), input.action.kind)
        try:
            with counted_step(self.deps.targets, input):
                return await apply_step(self.deps.targets, input)
        except TargetError as error:
            raise as_application_error(error) from error
