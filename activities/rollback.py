"""Rollback: previous good version, disable the new update, or switch to the fallback model."""

from __future__ import annotations

from temporalio import activity

from activities.actions import apply_through_target
from activities.deps import ActivityDeps
from activities.models import ApplyInput
from stanch.models import AppliedAction


class RollbackActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="apply_rollback")
    async def apply_rollback(self, input: ApplyInput) -> AppliedAction:
        activity.logger.info("rolling back %s: %s", input.target, input.action.kind)
        return await apply_through_target(self.deps, input)
