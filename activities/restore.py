"""Restore: undo one containment or rollback action through the inverse it recorded.

The action names the target that took it, so the undo goes to that control plane. An action
recorded by a dry run changed nothing: its undo is recorded, never sent.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from activities.drill_guard import refuse_outside_drill_route
from activities.metrics import counted_action
from stanch.models.actions import AppliedAction
from stanch.models.activity_io import UndoInput
from stanch.targets.base import TargetError
from stanch.temporal.activity_deps import ActivityDeps, as_application_error


class RestoreActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="lift_action")  # the name recorded in history since the first incident
    async def undo_action(self, input: UndoInput) -> AppliedAction:
        applied = input.applied
        undo_key = f"{applied.idempotency_key}/undo"
        refuse_outside_drill_route(self.deps.targets, applied.target, applied.kind)
        if input.dry_run or applied.result.get("dry_run"):
            would_undo = [undo for call in applied.result.get("would_call", []) for undo in call.get("undo", [])]
            result = {**applied.result, "undo_would_call": would_undo}
            return applied.model_copy(update={"undone_at": datetime.now(UTC), "undo_key": undo_key, "result": result})
        try:
            with counted_action(self.deps.targets, applied.target.adapter, applied.kind, done="undone", model=applied.target.model):
                await self.deps.targets.get(applied.target).undo(applied, undo_key)
        except TargetError as error:
            raise as_application_error(error, f"undo of {applied.kind} on {applied.target}") from error
        return applied.model_copy(update={"undone_at": datetime.now(UTC), "undo_key": undo_key})
