"""The shared vocabulary of Stanch: signals, actions, decisions and incident state.

Every workflow, activity, signal and update takes one of these pydantic models in and gives
one out (DESIGN.md "Temporal conventions"). New fields get defaults so running incidents
keep decoding.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field


class Severity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class SignalSource(StrEnum):
    alert = "alert"
    user_report = "user_report"
    audit_finding = "audit_finding"


class ReproCase(BaseModel):
    """A prompt that reproduced (or is reported to reproduce) the harm."""

    prompt: str
    output: str | None = None
    detectors: list[str] = Field(default_factory=list)


class Signal(BaseModel):
    """One alert, user report or audit finding, normalised."""

    signal_id: str = Field(min_length=1, description="the sender's id for this signal: repeats are deduplicated by it")
    source: SignalSource = SignalSource.alert
    sender: str = "generic"
    status: Literal["firing", "resolved"] = "firing"
    title: str = ""
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    severity_hint: Severity | None = None
    category: str | None = None
    model: str | None = None
    model_version: str | None = None
    repro: list[ReproCase] = Field(default_factory=list)
    links: list[str] = Field(default_factory=list)
    observed_at: datetime | None = None
    raw: dict[str, Any] = Field(default_factory=dict)


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
