"""The backstop that keeps a drill on its drill route.

`stanch drill` refuses a runbook with a step outside the gateway before it starts; this is the
check where the step runs, for whatever got past that (a runbook edited mid-drill, an incident
opened on a drill route by hand): a step of an incident on a drill route that would go to
another target (LiteLLM, Kubernetes, KServe...) or be a generic HTTP request would act on
production for real. It fails at once, never retried: a responder decides (skip or abort).
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from stanch.models.actions import TargetRef
from stanch.models.incident import is_drill_route
from stanch.targets.registry import TargetRegistry


def refuse_outside_drill_route(targets: TargetRegistry, ref: TargetRef, kind: str) -> None:
    """ApplicationError "DrillOutsideRoute" if `ref` is a drill route and the step would not stay on it."""
    if not is_drill_route(ref.model):
        return
    try:
        through_the_gateway = targets.kind_of(ref.adapter) == "gateway"
    except KeyError:  # an unknown target: it would fail anyway, but not as a drill's step
        through_the_gateway = False
    if through_the_gateway and kind != "http":
        return
    raise ApplicationError(
        f"{ref.model} is a drill route: step {kind} on target {ref.adapter} would act outside it (a drill acts only through the "
        "gateway, which holds the drill route); skip the step or abort the drill",
        type="DrillOutsideRoute",
        non_retryable=True,
    )
