"""What Stanch does to a control plane: the target, a runbook step, and what was applied.

New fields get defaults so running incidents keep decoding (DESIGN.md "Temporal conventions").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator


class Reversibility(BaseModel):
    """Whether a step may run at once where a runbook lets reversible steps skip the approval.

    Reversible here means: it only adds protection, and undoing it puts back exactly what was
    there. That is not `AppliedAction.reversible` (restore has an undo to send): a rollback has an
    undo too, but while it is in place users are served another version, so it waits for people.
    """

    reversible: bool
    why: str


# Every action kind Stanch's own adapters take, with the one-line reason for its answer. The
# planner, the workflow and `stanch runbooks plan` all read this table (`reversibility`).
# A `kind: http` step (generic HTTP, the recipes) declares its own: `reversible: true` on the
# step; undeclared, it is not reversible.
ACTION_REVERSIBILITY: dict[str, Reversibility] = {
    "block_prompts": Reversibility(reversible=True, why="blocking prompts adds a protection; its undo deletes exactly that block"),
    "block_outputs": Reversibility(reversible=True, why="blocking outputs adds a protection; its undo deletes exactly that block"),
    "disable_feature": Reversibility(reversible=True, why="a kill switch only takes a capability away; its undo releases that hold"),
    "restrict_endpoint": Reversibility(reversible=True, why="an endpoint rule only limits access; its undo deletes exactly that rule"),
    "add_guardrail": Reversibility(reversible=True, why="a guardrail only filters answers; it can be removed exactly"),
    "set_system_prompt": Reversibility(reversible=True, why="a system prompt override keeps the prompt it replaced, put back exactly"),
    "rollback_to_previous": Reversibility(reversible=False, why="changes the version users are served"),
    "disable_version": Reversibility(reversible=False, why="changes the version users are served"),
    "switch_to_fallback": Reversibility(reversible=False, why="serves users another model"),
    "deploy_version": Reversibility(reversible=False, why="changes the version users are served"),
    "register_version": Reversibility(reversible=False, why="adds a version to the registry, kept as history"),
    "deploy_finetune": Reversibility(reversible=False, why="trains and serves a new model version to users"),
    "rollback_alias": Reversibility(reversible=False, why="moves a registry alias: changes the version users are served"),
    "enable_feature": Reversibility(reversible=False, why="switches a capability on: it removes a protection, never adds one"),
    "http": Reversibility(reversible=False, why="a generic HTTP request: Stanch cannot tell what it changes unless the step says"),
}


class TargetRef(BaseModel):
    """Which control plane and which model an incident acts on."""

    adapter: str = "gateway"
    model: str
    version: str | None = None

    def __str__(self) -> str:
        suffix = f"@{self.version}" if self.version else ""
        return f"{self.adapter}:{self.model}{suffix}"


class ActionSpec(BaseModel):
    """One step a runbook asks a target to take (contain, roll back or hotfix)."""

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    target: str | None = Field(
        None,
        description="the configured target (targets.yaml) this step acts on, for the same model; unset: the incident's target",
    )
    reversible: bool | None = Field(
        None,
        description="a `kind: http` step says whether it only adds protection with an exact undo (it may then run at once "
        "where a runbook's gate says `reversible: auto`); unset: Stanch's table for the kind, not reversible for http",
    )

    @model_validator(mode="after")
    def _reversible_only_where_stanch_cannot_tell(self) -> ActionSpec:
        known = ACTION_REVERSIBILITY.get(self.kind)
        if self.reversible and known is not None and self.kind != "http" and not known.reversible:
            raise ValueError(f"step {self.kind!r} cannot be declared reversible: it {known.why}")
        return self


def reversibility(step: ActionSpec) -> Reversibility:
    """Whether the step may run at once under `reversible: auto`, and why (see Reversibility)."""
    if step.reversible is False:
        return Reversibility(reversible=False, why="the step says it is not reversible")
    if step.reversible and (step.kind == "http" or step.kind not in ACTION_REVERSIBILITY):
        return Reversibility(reversible=True, why="the step declares it reversible (it only adds protection, with an exact undo)")
    return ACTION_REVERSIBILITY.get(step.kind) or Reversibility(
        reversible=False, why=f"Stanch knows no reversibility for kind {step.kind!r}: taken as not reversible"
    )


class AppliedAction(BaseModel):
    """What a target did for an action, with what undoes it."""

    kind: str
    stage: str
    index: int
    target: TargetRef
    idempotency_key: str
    params: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] = Field(default_factory=dict)
    inverse: dict[str, Any] | None = None
    applied_at: datetime | None = None
    undone_at: datetime | None = None
    undo_key: str | None = None
    reversible: bool = True
    holder: str | None = Field(
        None, description="the incident occurrence that holds what this put in place on the target; None: recorded before holders"
    )
    went_ahead: str | None = Field(
        None,
        description="which path the step took past its stage's gate: 'at once: reversible (policy)', 'after approval by alice, "
        "bob', 'automatically (policy auto)'…; None: recorded before paths were",
    )


class ProbeResult(BaseModel):
    """What a target answered for one prompt."""

    prompt: str
    status_code: int
    output: str = ""
    model_version: str | None = None
    refusal_code: str | None = None
    refusal_incident: str | None = None


def idempotency_key(incident_id: str, stage: str, index: int, target: TargetRef, suffix: str = "") -> str:
    """Business identity of a side effect: never built from attempt numbers."""
    key = f"{incident_id}/{stage}/{index}/{target.adapter}:{target.model}"
    return f"{key}/{suffix}" if suffix else key
