"""Applying one runbook action through a target, shared by contain, rollback and hotfix."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from activities.deps import ActivityDeps, as_application_error
from activities.models import ApplyInput
from stanch.models import ActionSpec, AppliedAction, idempotency_key
from stanch.targets.base import TargetError


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


async def apply_through_target(deps: ActivityDeps, input: ApplyInput, action: ActionSpec | None = None) -> AppliedAction:
    action = action or rendered_action(input)
    key = idempotency_key(input.occurrence or input.incident_id, input.stage, input.index, input.target)
    try:
        target = deps.targets.get(input.target)
        outcome = await target.apply(input.target.model, action, key, input.incident_id)
    except TargetError as error:
        raise as_application_error(error, f"{input.stage} action {action.kind} on {input.target}") from error
    return AppliedAction(
        kind=action.kind,
        stage=input.stage,
        index=input.index,
        target=input.target,
        idempotency_key=key,
        params=action.params,
        result=outcome.result,
        inverse=outcome.inverse,
        applied_at=datetime.now(UTC),
        reversible=outcome.inverse is not None,
    )
