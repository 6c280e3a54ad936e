"""Everything an incident's workflow remembers: one serializable model, so continue-as-new
carries it whole into the next run (`IncidentInput.carried`; tests/unit/test_incident_memory.py
keeps the parts from remembering anything outside it). Everything in it is bounded, so a storm
of alerts never makes it too big to carry.

`state` is what responders and auditors read (the `state` query); the rest is what the workflow
needs to decide, and nobody else reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from stanch.models.activity_io import Finding
from stanch.models.decisions import AnswerCorrection, FailureDecision, ResolveRequest, TriageDecision
from stanch.models.incident import IncidentState
from stanch.models.signals import Signal


class IncidentMemory(BaseModel):
    state: IncidentState
    hardened: bool = Field(
        False,
        description="begun under the rules for storms, closing notices and harm come back (workflow.patched "
        "'storms-notices-recurrence'); an incident begun before keeps the old rules to its end",
    )
    recent_signal_ids: dict[str, None] = Field(
        default_factory=dict, description="digests of the latest signal ids, oldest first: a redelivered signal is not a second signal"
    )
    seen_decision_ids: set[str] = Field(default_factory=set, description="signal decisions spent: a copy counts nowhere")
    decisions_being_checked: set[str] = Field(default_factory=set, description="approval signals whose assertion is being checked")
    detectors_fired: list[str] = Field(default_factory=list, description="what the confirm checks' detectors found")
    findings: list[Finding] = Field(default_factory=list, description="what the confirm checks found")
    triage_decision: TriageDecision | None = None
    failure_decision: FailureDecision | None = Field(None, description="a responder's retry, skip or abort after a failure")
    failed_stage: str | None = Field(None, description="the stage whose failure waits for that decision")
    shadow_rounds: int = Field(0, description="shadows opened before restore: each round (a retry) opens a new one")
    running_long_step: str | None = Field(
        None, description="the stage of a long step (a fine-tune) under way: a responder may abort it while it runs"
    )
    status_before_failure: str | None = Field(None, description="the status to return to once the failure is decided")
    confirm_outcome: str | None = Field(None, description="what the confirm checks said: inconclusive waits for triage")
    confirmed: bool | None = Field(None, description="confirmed (True) or a false positive (False), once decided")
    steps_finished: list[str] = Field(default_factory=list, description="`stage/index` of every step applied or skipped")
    went_ahead: dict[str, str] = Field(
        default_factory=dict, description="per gated stage, how it went past its gate: 'after approval by alice, bob', 'automatically…'"
    )
    captured: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per `stage/index`: what a failed step read before its change; a retry reuses it"
    )
    corrections: list[AnswerCorrection] = Field(
        default_factory=list, description="answers responders supplied for repro cases, the latest per case: a fine-tune trains on them"
    )
    aborted_by: str | None = Field(None, description="who aborted the response, and why (`abort_reason`)")
    abort_reason: str = ""
    recurring: list[Signal] = Field(
        default_factory=list, description="firing signals that came while restoring, reviewing or awaiting the report"
    )
    recurring_not_kept: int = Field(0, description="more of them, past the ones kept in full")
    recurrences_paged: int = Field(0, description="of those, how many on-call was paged for")
    handing_over: bool = Field(False, description="this run is handing over to the next: no new grading starts")
    in_flight: int = Field(0, description="notifications and gradings under way: the run hands over only when none is")
    resolve_request: ResolveRequest | None = None
    severity_set_by_human: bool = False
    signals_at_human_severity: int = Field(0, description="a responder's severity stands until newer signals arrive")
    regrade_requested: bool = False
    signals_graded: int = Field(0, description="signals counted at the last grading")
    kept_signals_graded: int = Field(0, description="signals kept in full at the last grading")
    notifications_sent: int = Field(0, description="numbers each notification: its delivery is idempotent by that number")
    last_escalation_at: datetime
    waiting_since: datetime | None = Field(None, description="when the wait for a person (or its last reminder) began")
    next_report_reminder_at: datetime | None = Field(None, description="when the report clock reminds next")
    person_wait_began: datetime | None = Field(None, description="when the current wait for a person began (not reset by reminders)")
    metrics_emitted: list[str] = Field(
        default_factory=list, description="lifecycle metrics already emitted (time_to_contain, ack_sla_breach…): each once per occurrence"
    )
