"""One runbook step on a target: rendered, keyed, planned and applied.

The contain, rollback and hotfix activities apply steps through `apply_step`.

A step acts on the incident's target unless it names another configured target
(`target: litellm`), for the same model. The idempotency key names the target actually used,
and so does the AppliedAction, so restore undoes the step on the control plane that took it.

`plan_step` is the same step described instead of done: `stanch runbooks plan` prints it,
and a dry-run incident records it in place of applying.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, Field

from stanch.models.actions import ActionSpec, AppliedAction, TargetRef, idempotency_key
from stanch.models.activity_io import ApplyInput
from stanch.targets.base import PlannedCall, TargetError, carried_captures, unfit_value
from stanch.targets.config import SECRET_REFERENCE
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


def render(value: Any, variables: dict[str, str], *, in_url: bool = False) -> Any:
    """Fill `{model}`, `{version}`, `{incident_id}` and `{last_good_version}` in action params, leaving regex braces alone.

    These values come from an alert, so they are data, never syntax: a value that could name a
    secret or climb a path is refused (TargetError, not retryable: `unfit_value` says why, without
    repeating it); in a `url` field a value is percent-encoded (`/` too); and nothing is filled
    inside a secret reference (`${...}`), so every reference a request expands is runbook text.
    """
    if isinstance(value, str):
        return _render_text(value, variables, in_url)
    if isinstance(value, list):
        return [render(item, variables, in_url=in_url) for item in value]
    if isinstance(value, dict):
        return {key: render(item, variables, in_url=key == "url") for key, item in value.items()}
    return value


def _render_text(text: str, variables: dict[str, str], in_url: bool) -> str:
    parts, last = [], 0
    for reference in SECRET_REFERENCE.finditer(text):  # references stay as written
        parts += [_fill(text[last : reference.start()], variables, in_url), reference.group(0)]
        last = reference.end()
    parts.append(_fill(text[last:], variables, in_url))
    return "".join(parts)


def _fill(text: str, variables: dict[str, str], in_url: bool) -> str:
    for name, replacement in variables.items():
        placeholder = "{" + name + "}"
        if placeholder not in text:
            continue
        unfit = unfit_value(replacement)
        if unfit:
            raise TargetError(
                f"{placeholder} of this incident {unfit}: a value from the alert is never filled into a request that way; "
                "check the alert (or the runbook's `target.model` template)",
                retryable=False,
            )
        text = text.replace(placeholder, quote(replacement, safe="") if in_url else replacement)
    return text


def rendered_action(input: ApplyInput) -> ActionSpec:
    """The step's action with its templates filled in, and the specs of the runbook's own detectors it
    blocks by: the control plane runs those detectors itself (the runbook id alone means nothing there)."""
    variables = {
        "model": input.target.model,
        "version": input.target.version or "",
        "incident_id": input.incident_id,
        # Bisection's last good change, "" when it named none (a rollback then goes back as before).
        "last_good_version": input.last_good_version,
    }
    params = render(input.action.params, variables)
    if input.detector_specs:
        specs = {name: spec.model_dump(mode="json") for name, spec in input.detector_specs.items()}
        params = {**params, "detector_specs": {**params.get("detector_specs", {}), **specs}}
    return input.action.model_copy(update={"params": params})


def step_target(input: ApplyInput) -> TargetRef:
    """The target this step acts on: the one it names, else the incident's; same model either way."""
    named = input.action.target
    return input.target if named in (None, input.target.adapter) else input.target.model_copy(update={"adapter": named})


def step_key(input: ApplyInput) -> str:
    return idempotency_key(input.occurrence or input.incident_id, input.stage, input.index, step_target(input))


def step_holder(input: ApplyInput) -> str:
    """Who holds what the step puts in place: the occurrence, so a recurrence of the same incident
    id (a new occurrence) holds its protections apart from the earlier one's."""
    return input.occurrence or input.incident_id


def plan_step(targets: TargetRegistry, input: ApplyInput, action: ActionSpec | None = None) -> StepPlan:
    """Describe the step without touching anything; TargetError if it could not run as written."""
    action = action or rendered_action(input)
    ref, key = step_target(input), step_key(input)
    calls = targets.get(ref).plan(ref.model, action, key)
    return StepPlan(
        stage=input.stage, index=input.index, kind=action.kind, description=action.description, target=ref, idempotency_key=key, calls=calls
    )


async def apply_step(targets: TargetRegistry, input: ApplyInput, action: ActionSpec | None = None) -> AppliedAction:
    """Apply the step once (its idempotency key); TargetError naming the step and target if it fails."""
    ref, key = step_target(input), step_key(input)
    # What a failed run of this step read before its change, carried back by the workflow.
    carried = carried_captures.set((key, input.captured) if input.captured else None)
    try:
        action = action or rendered_action(input)
        if input.dry_run:
            return dry_run_record(plan_step(targets, input, action), action)
        outcome = await targets.get(ref).apply(ref.model, action, key, input.incident_id, holder=step_holder(input))
    except TargetError as error:
        what = f"{input.stage} action {input.action.kind} on {_shown(ref)}"
        raise TargetError(f"{what}: {error}", retryable=error.retryable, details=error.details) from error
    finally:
        carried_captures.reset(carried)
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
        holder=step_holder(input),
    )


def _shown(ref: TargetRef) -> str:
    """The target as an error names it: without a model or version that is unfit to repeat."""
    return str(ref) if unfit_value(ref.model) is None and unfit_value(ref.version or "") is None else f"target {ref.adapter}"


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
