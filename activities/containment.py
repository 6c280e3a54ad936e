"""Containment: limit harm now (kill switches, blocked prompts and outputs, restricted endpoints)."""

from __future__ import annotations

from temporalio import activity

from activities.actions import apply_through_target
from activities.deps import ActivityDeps
from activities.models import ApplyInput
from stanch.models import AppliedAction


class ContainmentActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="apply_containment")
    async def apply_containment(self, input: ApplyInput) -> AppliedAction:
        activity.logger.info("containing %s: %s", input.target, input.action.kind)
        return await apply_through_target(self.deps, input)
