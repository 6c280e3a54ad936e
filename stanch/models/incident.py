"""An incident as its workflow holds it: the input it starts with and the state it keeps.

`IncidentState` is what responders and auditors read (the `state` query); `IncidentMemory` is
everything the workflow remembers, that state included: what continue-as-new will carry.
Alerts arrive by the `add_signal` signal; responders' messages are in `stanch.models.decisions`.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from stanch.models.actions import AppliedAction, TargetRef
from stanch.models.bisection import Cause
from stanch.models.decisions import ReportFiled
from stanch.models.exposure import Exposure
from stanch.models.signals import ReproCase, Severity, Signal
from stanch.runbooks.schema import STAGES, Runbook

WORKFLOW_NAME = "IncidentWorkflow"


class IncidentStatus(StrEnum):
    open = "open"
    triage = "triage"  # confirmation inconclusive: a human decides
    confirmed = "confirmed"
    containing = "containing"
    rolling_back = "rolling_back"
    hotfixing = "hotfixing"
    verifying = "verifying"
    restoring = "restoring"
    reviewing = "reviewing"
    awaiting_decision = "awaiting_decision"  # an action failed: retry / skip / abort
    awaiting_report = "awaiting_report"  # serious incident closed but its report is not filed yet
    closed = "closed"
    false_positive = "false_positive"
    aborted = "aborted"


TERMINAL_STATUSES = {IncidentStatus.closed, IncidentStatus.false_positive, IncidentStatus.aborted}

# A drill route: the gateway's copy of a model that one drill acts on (`POST /admin/drills` on
# the gateway names it `drill-<8 hex>.<model>`). The gateway is a service of its own, so the
# spelling is the contract between the two, written in both places.
DRILL_ROUTE = re.compile(r"^drill-[0-9a-f]{8}\.")


def is_drill_route(model: str | None) -> bool:
    """Whether `model` (a model name, or an incident target `adapter:model`) is a drill route:
    an incident on it is a rehearsal of people and machinery, never harm to users."""
    if not model:
        return False
    return bool(DRILL_ROUTE.match(model) or DRILL_ROUTE.match(model.partition(":")[2]))


class StageStatus(StrEnum):
    pending = "pending"
    running = "running"
    awaiting_approval = "awaiting_approval"
    failed = "failed"
    done = "done"
    skipped = "skipped"
    rejected = "rejected"


class IncidentInput(BaseModel):
    incident_id: str
    runbook: Runbook
    runbook_sha256: str
    target: TargetRef
    dedup_key: str
    upsert_search_attributes: bool = True
    dry_run: bool = Field(False, description="a rehearsal: every action records the calls it would make and makes none")
    drill: bool = Field(
        False, description="a drill: its target is a drill route (`stanch drill`); real pages and approvals, labelled DRILL everywhere"
    )
    events_before_handing_over: int = Field(
        8_000,
        ge=100,
        description="a run continues as new at its next wait once its history is this long, or sooner when Temporal suggests "
        "it (by default at 4,096 events; it warns at 10,240 and ends a run at 51,200)",
    )
    recurrence: Recurrence | None = Field(
        None, description="set when harm came back after the previous occurrence was contained: this run is a new occurrence"
    )
    # An IncidentMemory, as JSON: the memory holds an IncidentState, so this module cannot name it.
    carried: dict[str, Any] | None = Field(
        None, description="what the previous run remembered: set only when the incident continues as new (a long history)"
    )


# --- state ---------------------------------------------------------------------------


class StageState(BaseModel):
    name: str
    status: StageStatus = StageStatus.pending
    started_at: datetime | None = None
    finished_at: datetime | None = None
    detail: str = ""


class PendingApproval(BaseModel):
    stage: str
    severity: Severity
    count: int
    roles: list[str]
    required_roles: list[str] = Field(default_factory=list)
    requested_by: str = "stanch"
    requested_at: datetime
    approvers: list[str] = Field(default_factory=list)
    auto_on_timeout: bool = Field(False, description="the runbook says: act if nobody decides within the approval timeout")
    lowered_by: list[str] = Field(
        default_factory=list, description="who lowered severity while this step waited: like its requester, they cannot approve it"
    )


class ApprovalRecord(BaseModel):
    stage: str
    approver: str
    roles: list[str] = Field(default_factory=list)
    approve: bool
    comment: str = ""
    at: datetime
    via: Literal["update", "signal"] = "update"
    verified: bool = Field(False, description="carried a valid assertion from the API: only these count toward approval")


class TimelineEntry(BaseModel):
    at: datetime
    kind: str  # signal, stage, action, approval, escalation, notification, decision, severity, objective, note
    message: str
    actor: str = "stanch"
    data: dict[str, Any] = Field(default_factory=dict)


class EvidenceRecord(BaseModel):
    sha256: str
    location: str
    taken_at: datetime
    summary: dict[str, Any] = Field(default_factory=dict)


class RegulatoryClock(BaseModel):
    serious: bool = False
    reason: str = ""
    aware_at: datetime | None = None
    deadline: datetime | None = None
    reminders_sent: int = 0
    filed: ReportFiled | None = None


class Recurrence(BaseModel):
    """What an occurrence hands the next when harm is reported again while it restores, reviews
    or waits for its report: the incident id opens a new occurrence instead of absorbing it."""

    previous_occurrences: list[str]
    signals: list[Signal] = Field(description="the firing signals that reported the harm again")
    signals_not_kept: int = Field(0, description="more of them, counted but not kept in full")
    recent_signal_ids: dict[str, None] = Field(default_factory=dict, description="so a repeat of an old alert is not new harm")
    regulatory: RegulatoryClock | None = Field(None, description="a report not yet filed: its clock goes on in the next occurrence")
    protections: list[AppliedAction] = Field(
        default_factory=list, description="still in place: the next occurrence's restore lifts them with its own"
    )


class GateWait(BaseModel):
    """One wait for a person that held the lifecycle up: an approval, a triage, a decision after a
    failure. What the time-to-contain breakdown counts as human time."""

    gate: str = Field(description="in words: 'the contain approval', 'triage', 'the decision on the failed contain'")
    stage: str
    began_at: datetime
    ended_at: datetime
    waited_for: str = Field("", description="who or what it waited for: 'a second approver', 'nobody: automatic after the timeout'")

    @property
    def seconds(self) -> float:
        return (self.ended_at - self.began_at).total_seconds()


class ObjectiveOutcome(BaseModel):
    """How long the incident took to reach a milestone (acknowledge, contain, restore), against
    the runbook's objective for its severity, and where the time went."""

    milestone: Literal["acknowledge", "contain", "restore"]
    reached_at: datetime = Field(description="when it was reached, or when its stage ended short of it (`reached` False)")
    reached: bool = Field(
        True, description="False: the stage ended short of the milestone (restore left protections in place); no time was observed"
    )
    severity: Severity = Field(description="the severity whose objective applied when the milestone was reached")
    elapsed_seconds: float = Field(description="from opening to the milestone")
    objective_seconds: float | None = Field(None, description="the runbook's objective; None when it sets none")
    met: bool | None = Field(None, description="reached within the objective; None when there is none")
    machine_seconds: float = Field(0.0, description="checks, evidence, grading, applying actions, notifying")
    human_seconds: float = Field(0.0, description="waiting for people: acknowledgement, triage, approvals, decisions")
    took_longest: str = Field("", description="the single wait or step that took the most: 'the contain approval waited 4m12s …'")
    took_longest_by: Literal["machine", "human", ""] = ""
    summary: str = ""


class IncidentState(BaseModel):
    id: str
    drill: bool = Field(False, description="a drill on a drill route (`stanch drill`): a rehearsal, never counted as an incident")
    occurrence: str = Field(
        "", description="this incident's own name: its id repeats when alerts fire again after it closed, so add the first run"
    )
    status: IncidentStatus
    severity: Severity
    severity_reasons: list[str] = Field(default_factory=list)
    runbook: str
    runbook_sha256: str
    target: TargetRef
    dedup_key: str
    opened_at: datetime
    closed_at: datetime | None = None
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    acknowledged_elsewhere: str | None = Field(
        None, description="a sender said someone acknowledged there (PagerDuty, say): a hint; only acknowledging in Stanch stops escalation"
    )
    escalation_tier: int = 0
    stages: list[StageState]
    pending_approval: PendingApproval | None = None
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    actions: list[AppliedAction] = Field(default_factory=list)
    signals: list[Signal] = Field(
        default_factory=list,
        description="the signals kept in full: in a storm, only those that bring something new (every one is in history)",
    )
    signal_count: int = Field(0, description="every firing signal counted, kept in full or not")
    closing_notices: int = Field(0, description="resolved and acknowledged notices: recorded, never counted as harm")
    runs: int = Field(1, description="how many workflow runs this occurrence took: a long history continues as new")
    previous_occurrences: list[str] = Field(default_factory=list, description="earlier occurrences of this incident id, oldest first")
    repro: list[ReproCase] = Field(default_factory=list)
    evidence: EvidenceRecord | None = None
    exposure: Exposure | None = Field(None, description="the blast radius measured on confirmation: counts and ids, never content")
    cause: Cause | None = Field(None, description="bisection: the first bad change and the last good one, or why none was named")
    regulatory: RegulatoryClock = Field(default_factory=RegulatoryClock)
    review: dict[str, Any] = Field(default_factory=dict)
    close_reason: str = ""
    timeline: list[TimelineEntry] = Field(default_factory=list)
    timeline_omitted: int = Field(0, description="entries dropped from the middle of a very long timeline; history keeps them all")
    gate_waits: list[GateWait] = Field(default_factory=list, description="each wait for a person, the latest kept")
    objectives: list[ObjectiveOutcome] = Field(
        default_factory=list, description="time to acknowledge, contain and restore: against the runbook's objectives, where the time went"
    )

    def stage(self, name: str) -> StageState:
        return next(s for s in self.stages if s.name == name)


class Attention(BaseModel):
    """What needs someone now, without the whole state (the `attention` query): the API's metrics
    read it for every open incident, and the state of a long incident is large."""

    status: IncidentStatus
    severity: Severity
    runbook: str
    dry_run: bool = Field(description="a rehearsal: every action was only recorded, nothing was changed")
    pending_approval: PendingApproval | None = None
    acknowledged: bool
    ack_due_at: datetime | None = Field(description="opened_at + the severity's ack SLA; None once acknowledged")
    escalation_tier: int


def fresh_stages() -> list[StageState]:
    return [StageState(name=name) for name in STAGES]


IncidentInput.model_rebuild()  # Recurrence is defined below it
