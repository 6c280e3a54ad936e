"""Rollback: previous good version, disable the new update, or switch to the fallback model."""

from __future__ import annotations

from temporalio import activity

from activities.drill_guard import refuse_outside_drill_route
from activities.metrics import counted_step
from stanch.models.actions import AppliedAction
from stanch.models.activity_io import ApplyInput
from stanch.targets.base import TargetError
from stanch.targets.steps import apply_step, step_target
from stanch.temporal.activity_deps import ActivityDeps, as_application_error


class RollbackActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="apply_rollback")
    async def apply_rollback(self, input: ApplyInput) -> AppliedAction:
        activity.logger.info("rolling back %s: %s", input.target, input.action.kind)
        refuse_outside_drill_route(self.deps.targets, step_target(input), input.action.kind)
        try:
            with counted_step(self.deps.targets, input):
                return await apply_step(self.deps.targets, input)
        except TargetError as error:
            raise as_application_error(error) from error
