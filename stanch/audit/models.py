"""The timeline of one incident run, as read from its history alone (see timeline.py).

Every entry names the history event it comes from (`event_id`), so an auditor can check any
line against the raw history in the Temporal UI or `temporal workflow show`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class SignalEntry(BaseModel):
    """An alert, user report or finding that reached the incident (signal `add_signal`)."""

    at: datetime
    event_id: int
    sender: str
    signal_id: str
    title: str = ""
    source: str = ""
    status: str = ""
    severity_hint: str | None = None
    redelivery: bool = Field(False, description="same signal id as an earlier signal: the workflow ignored it")
    client: str = Field("", description="identity of the Temporal client that sent it (e.g. the API's pid@host)")


class DecisionEntry(BaseModel):
    """A responder's decision: an update (acknowledge, approve, reject, …) or an approval signal."""

    at: datetime
    event_id: int = Field(description="UpdateAccepted / UpdateAdmitted or WorkflowExecutionSignaled event")
    completed_event_id: int | None = None
    completed_at: datetime | None = None
    name: str = Field(description="update or signal name, e.g. approve, set_severity, approve_signal")
    via: Literal["update", "signal"]
    who: str = ""
    roles: list[str] = Field(default_factory=list)
    stage: str = ""
    what: str = Field("", description="the decision in words")
    nonce: str = Field("", description="what the assertion is bound to: the update id, or the signal's decision id")
    verified: bool = Field(
        False,
        description="vouched for by the Stanch API: its assertion verifies here with a configured key, or — the key not "
        "configured here — the workflow recorded that it did (an accepted update passed its validator; a signal's verdict "
        "is a local activity's result)",
    )
    checked_here: bool = Field(False, description="the signature was checked here, with a key configured for this audit")
    verification: str = Field("", description="how `verified` is known, in words")
    outcome: Literal["accepted", "not acted on", "refused", "pending", "delivered"] = "pending"
    message: str = Field("", description="the workflow's receipt, or why it refused")
    fields: dict[str, Any] = Field(default_factory=dict, description="the decision as sent, without its assertion")
    client: str = Field("", description="identity of the Temporal client that sent it")


class ActionEntry(BaseModel):
    """A change made to the target: contain, roll back, hotfix, or a restore undoing one of them."""

    at: datetime
    event_id: int = Field(description="ActivityTaskScheduled event")
    activity: str
    stage: str
    index: int | None = None
    kind: str
    target: str = ""
    idempotency_key: str = ""
    key_source: Literal["result", "computed", "none"] = Field("none", description="from the activity's result, or rebuilt from its input")
    undoes: str = Field("", description="for a restore: the stage and key of the action it undoes")
    attempts: int = 0
    outcome: Literal["completed", "failed", "timed out", "canceled", "pending"] = "pending"
    finished_at: datetime | None = None
    finished_event_id: int | None = None
    result: dict[str, Any] = Field(default_factory=dict)
    failure: str = ""


class StepEntry(BaseModel):
    """Any other activity: confirm, evidence, severity grading, verification, review."""

    at: datetime
    event_id: int
    activity: str
    outcome: Literal["completed", "failed", "timed out", "canceled", "pending"] = "pending"
    finished_at: datetime | None = None
    finished_event_id: int | None = None
    summary: str = ""
    result: dict[str, Any] = Field(default_factory=dict)
    failure: str = ""


class NotificationEntry(BaseModel):
    """A page, escalation, approval request, failure notice or report reminder (activity `notify`)."""

    at: datetime
    event_id: int
    kind: str
    recipients: list[str] = Field(default_factory=list)
    tier: int = 0
    message: str = ""
    delivered: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    outcome: Literal["completed", "failed", "timed out", "canceled", "pending"] = "pending"


class TimerEntry(BaseModel):
    at: datetime
    event_id: int
    timer_id: str
    seconds: float = Field(description="how long it was set for")
    outcome: Literal["fired", "canceled", "pending"] = "pending"
    ended_at: datetime | None = None
    ended_event_id: int | None = None


class StatusChange(BaseModel):
    """The incident's status and severity as it published them (search attribute upserts)."""

    at: datetime
    event_id: int
    status: str | None = None
    severity: str | None = None


class EvidenceEntry(BaseModel):
    at: datetime
    event_id: int = Field(description="ActivityTaskCompleted event of snapshot_evidence")
    sha256: str
    location: str


MilestoneName = Literal["acknowledged", "contained", "rolled back", "fix verified", "restored", "closed"]


class Milestone(BaseModel):
    """How long the response took to reach a point, from the first signal (or the start)."""

    name: MilestoneName
    at: datetime | None = None
    event_id: int | None = None
    seconds: float | None = Field(None, description="since the first signal; None if not reached")
    how: str = Field("", description="how it was reached, or that it was not reached (yet, while the run is running)")

    @property
    def reached(self) -> bool:
        return self.at is not None


class StageSummary(BaseModel):
    name: str
    status: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    detail: str = ""


class Timeline(BaseModel):
    workflow_id: str
    run_id: str
    incident_id: str = ""
    occurrence: str = Field(
        "", description="what assertions are bound to: <incident id>@<its first run id[:8]>, kept from run to run as the workflow keeps it"
    )
    continued_from: str | None = Field(
        None, description="the run this one took over from (a long history handed over, or the previous occurrence)"
    )
    runbook: str = ""
    runbook_sha256: str = ""
    target: str = ""
    dry_run: bool = Field(
        False,
        description="a rehearsal (`stanch runbooks plan --dry-run`, IncidentInput.dry_run): every action was only recorded, nothing was "
        "changed",
    )
    drill: bool = Field(
        False, description="a drill (`stanch drill`, IncidentInput.drill): real pages and approvals on a drill route, not an incident"
    )
    started_at: datetime
    first_signal_at: datetime | None = None
    ended_at: datetime | None = None
    ended_event_id: int | None = None
    execution: str = Field("running", description="completed, failed, terminated, timed out, canceled, continued as new or running")
    final_status: str | None = Field(None, description="the incident's status in its completion result")
    final_severity: str | None = None
    close_reason: str = ""
    events: int
    trusted_keys: list[str] = Field(default_factory=list, description="ids of the decision keys assertions were checked with")
    verdicts_in_history: bool = Field(
        False, description="the run records each decision's verdict (validator, local activity): no key is needed to know it"
    )
    milestones: list[Milestone] = Field(default_factory=list)
    signals: list[SignalEntry] = Field(default_factory=list)
    decisions: list[DecisionEntry] = Field(default_factory=list)
    actions: list[ActionEntry] = Field(default_factory=list)
    steps: list[StepEntry] = Field(default_factory=list)
    notifications: list[NotificationEntry] = Field(default_factory=list)
    timers: list[TimerEntry] = Field(default_factory=list)
    status_changes: list[StatusChange] = Field(default_factory=list)
    evidence: list[EvidenceEntry] = Field(default_factory=list)
    stages: list[StageSummary] = Field(default_factory=list, description="from the completion result, when the run completed")
    warnings: list[str] = Field(default_factory=list)
