"""Applying one runbook step through a target, shared by contain, rollback and hotfix.

A step acts on the incident's target unless it names another configured target
(`target: litellm`), for the same model. The idempotency key names the target actually used,
and so does the AppliedAction, so restore undoes the step on the control plane that took it.

`plan_step` is the same step described instead of done: `stanch runbooks plan` prints it,
and a dry-run incident records it in place of applying.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from activities.deps import ActivityDeps, as_application_error
from activities.models import ApplyInput
from stanch.models import ActionSpec, AppliedAction, TargetRef, idempotency_key
from stanch.targets.base import PlannedCall, TargetError
from stanch.targets.registry import TargetRegistry


class StepPlan(BaseModel):
    """One runbook step as the incident would run it: target, key, and every call with its undo."""

    stage: str
    index: int
    kind: str
    description: str = ""
    target: TargetRef
    idempotency_key: str
    calls: list[PlannedCall] = Field(default_factory=list)


def render(value: Any, variables: dict[str, str]) -> Any:
    """Fill `{model}`, `{version}` and `{incident_id}` in action params, leaving regex braces alone."""
    if isinstance(value, str):
        for name, replacement in variables.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, list):
        return [render(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: render(item, variables) for key, item in value.items()}
    return value


def rendered_action(input: ApplyInput) -> ActionSpec:
    variables = {"model": input.target.model, "version": input.target.version or "", "incident_id": input.incident_id}
    return input.action.model_copy(update={"params": render(input.action.params, variables)})


def step_target(input: ApplyInput) -> TargetRef:
    """The target this step acts on: the one it names, else the incident's; same model either way."""
    named = input.action.target
    return input.target if named in (None, input.target.adapter) else input.target.model_copy(update={"adapter": named})


def step_key(input: ApplyInput) -> str:
    return idempotency_key(input.occurrence or input.incident_id, input.stage, input.index, step_target(input))


def plan_step(targets: TargetRegistry, input: ApplyInput, action: ActionSpec | None = None) -> StepPlan:
    """Describe the step without touching anything; TargetError if it could not run as written."""
    action = action or rendered_action(input)
    ref, key = step_target(input), step_key(input)
    calls = targets.get(ref).plan(ref.model, action, key)
    return StepPlan(stage=input.stage, index=input.index, kind=action.kind, description=action.description, target=ref, idempotency_key=key, calls=calls)


async def apply_through_target(deps: ActivityDeps, input: ApplyInput, action: ActionSpec | None = None) -> AppliedAction:
    action = action or rendered_action(input)
    ref, key = step_target(input), step_key(input)
    try:
        if input.dry_run:
            return dry_run_record(plan_step(deps.targets, input, action), action)
        outcome = await deps.targets.get(ref).apply(ref.model, action, key, input.incident_id)
    except TargetError as error:
        raise as_application_error(error, f"{input.stage} action {action.kind} on {ref}") from error
    return AppliedAction(
        kind=action.kind,
        stage=input.stage,
        index=input.index,
        target=ref,
        idempotency_key=key,
        params=action.params,
        result=outcome.result,
        inverse=outcome.inverse,
        applied_at=datetime.now(UTC),
        reversible=outcome.inverse is not None,
    )


def dry_run_record(plan: StepPlan, action: ActionSpec) -> AppliedAction:
    """What a rehearsal records in place of the change: the calls it would have made."""
    reversible = any(call.undo for call in plan.calls)
    return AppliedAction(
        kind=action.kind,
        stage=plan.stage,
        index=plan.index,
        target=plan.target,
        idempotency_key=plan.idempotency_key,
        params=action.params,
        result={"dry_run": True, "would_call": [call.model_dump(mode="json") for call in plan.calls]},
        inverse={"dry_run": True} if reversible else None,
        applied_at=datetime.now(UTC),
        reversible=reversible,
    )
