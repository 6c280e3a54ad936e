"""What Stanch does to a control plane: the target, a runbook step, and what was applied.

New fields get defaults so running incidents keep decoding (DESIGN.md "Temporal conventions").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


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
