"""Everything an incident's workflow remembers: one serializable model, so continue-as-new can
carry it whole (the workflow does not continue as new yet; tests/unit/test_incident_memory.py
keeps the parts from remembering anything outside it).

`state` is what responders and auditors read (the `state` query); the rest is what the workflow
needs to decide, and nobody else reads.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from stanch.models.activity_io import Finding
from stanch.models.decisions import FailureDecision, ResolveRequest, TriageDecision
from stanch.models.incident import IncidentState


class IncidentMemory(BaseModel):
    state: IncidentState
    seen_signal_ids: set[str] = Field(default_factory=set, description="a redelivered signal is not a second signal")
    seen_decision_ids: set[str] = Field(default_factory=set, description="signal decisions spent: a copy counts nowhere")
    detectors_fired: list[str] = Field(default_factory=list, description="what the confirm checks' detectors found")
    findings: list[Finding] = Field(default_factory=list, description="what the confirm checks found")
    triage_decision: TriageDecision | None = None
    failure_decision: FailureDecision | None = Field(None, description="a responder's retry, skip or abort after a failure")
    failed_stage: str | None = Field(None, description="the stage whose failure waits for that decision")
    resolve_request: ResolveRequest | None = None
    severity_set_by_human: bool = False
    signals_at_human_severity: int = Field(0, description="a responder's severity stands until newer signals arrive")
    regrade_requested: bool = False
    signals_graded: int = 0
    notifications_sent: int = Field(0, description="numbers each notification: its delivery is idempotent by that number")
    last_escalation_at: datetime
