"""What arrives: signals (alerts, user reports, audit findings), their severity and repro cases.

New fields get defaults so running incidents keep decoding (DESIGN.md "Temporal conventions").
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
    status: Literal["firing", "resolved", "acknowledged"] = Field(
        "firing", description="firing is harm; resolved and acknowledged are closing notices, recorded and never counted as harm"
    )
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

    @property
    def is_closing_notice(self) -> bool:
        """The sender says the harm stopped (resolved) or someone is on it (acknowledged)."""
        return self.status != "firing"
