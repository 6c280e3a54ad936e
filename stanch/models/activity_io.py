"""One input and one output model per activity (DESIGN.md "Temporal conventions")."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from stanch.detectors.specs import DetectorSpec
from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.models.bisection import Cause
from stanch.models.decisions import AnswerCorrection
from stanch.models.exposure import Exposure
from stanch.models.incident import ApprovalRecord, EvidenceRecord, GateWait, ObjectiveOutcome, RegulatoryClock, StageState
from stanch.models.signals import ReproCase, Severity, Signal
from stanch.runbooks.schema import ConfirmCheck, Runbook, Verify


class Finding(BaseModel):
    check: str
    outcome: Literal["confirmed", "not_confirmed", "inconclusive"]
    detail: str
    detectors: list[str] = Field(default_factory=list)


class ConfirmInput(BaseModel):
    incident_id: str
    target: TargetRef
    checks: list[ConfirmCheck]
    repro: list[ReproCase] = Field(default_factory=list)
    detector_specs: dict[str, DetectorSpec] = Field(default_factory=dict, description="the runbook's own detectors, beside the built-ins")


class ConfirmResult(BaseModel):
    outcome: Literal["confirmed", "not_confirmed", "inconclusive"]
    findings: list[Finding] = Field(default_factory=list)
    detectors_fired: list[str] = Field(default_factory=list)
    reproduced: list[ReproCase] = Field(default_factory=list)


class EvidenceInput(BaseModel):
    incident_id: str
    occurrence: str = ""
    runbook: str
    runbook_sha256: str
    target: TargetRef
    signals: list[Signal]
    repro: list[ReproCase] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    step_targets: list[TargetRef] = Field(
        default_factory=list, description="other targets the runbook's steps act on: their state is evidence too"
    )


class EvidenceResult(BaseModel):
    sha256: str
    location: str = Field(description="in the artefact store (a file:// or s3:// URL); a path on the worker in older histories")
    summary: dict[str, Any] = Field(default_factory=dict)


class GradeInput(BaseModel):
    runbook: Runbook
    signals: list[Signal]
    detectors_fired: list[str] = Field(default_factory=list)
    signal_count: int | None = Field(None, description="every signal counted; `signals` holds those kept in full")
    current: Severity | None = Field(None, description="severity already in force, if graded or set before")
    affected_users: int | None = Field(None, description="users the blast radius found affected; None: not measured")


class GradeResult(BaseModel):
    severity: Severity
    reasons: list[str] = Field(default_factory=list)
    serious: bool = False
    report_days: int = 15
    serious_reason: str = ""


class ApplyInput(BaseModel):
    incident_id: str
    occurrence: str = Field("", description="the incident's own name; idempotency keys are built from it")
    stage: str
    index: int
    target: TargetRef
    action: ActionSpec
    dry_run: bool = Field(False, description="record the calls the action would make, make none")
    captured: dict[str, Any] | None = Field(
        None, description="what a failed run of this step read before its change (`before` captures), reused instead of read again"
    )
    # Only a fine-tune step carries these (its training file is built from them); other steps' inputs stay small.
    repro: list[ReproCase] = Field(default_factory=list, description="the incident's repro cases, for a fine-tune's training file")
    corrections: list[AnswerCorrection] = Field(default_factory=list, description="answers responders supplied for repro cases")
    verify_detectors: list[str] = Field(
        default_factory=list, description="what verification will look for after a fine-tune: the suite cases it learns are those"
    )
    detector_specs: dict[str, DetectorSpec] = Field(
        default_factory=dict, description="the runbook's own detectors this step names in params.detectors: the gateway blocks by them"
    )
    last_good_version: str = Field("", description="the release of the last good change bisection named: `{last_good_version}`")


class UndoInput(BaseModel):
    incident_id: str
    applied: AppliedAction
    dry_run: bool = Field(False, description="record the undo, call nothing")


class VerifyInput(BaseModel):
    incident_id: str
    target: TargetRef
    detectors: list[str]
    repro: list[ReproCase] = Field(default_factory=list)
    include_regression_suite: bool = True
    detector_specs: dict[str, DetectorSpec] = Field(default_factory=dict, description="the runbook's own detectors, beside the built-ins")
    sampling: Verify | None = Field(None, description="the runbook's verify block: samples, temperature, threshold; None: one sample")
    metric_checks: list[ConfirmCheck] = Field(
        default_factory=list, description="the runbook's metric confirm checks: with nothing to replay, a recovered metric verifies"
    )
    version: str = Field(
        "release",
        description="the version to verify, with its hotfixes: the release a hotfix deployed, else the version users will get back",
    )


class CaseResult(BaseModel):
    prompt: str
    origin: Literal["incident", "regression"]
    passed: bool
    status_code: int
    model_version: str | None = None
    hits: list[str] = Field(default_factory=list)
    messages: list[dict[str, Any]] = Field(default_factory=list, description="the conversation, for a multi-turn case")
    samples: int = 1
    harmful_samples: int = 0
    undecided_samples: int = 0
    detail: str = Field("", description="why the case failed, in a sentence (undecided detectors, refusals)")


class VerifyResult(BaseModel):
    passed: bool
    version: str | None = None
    cases: list[CaseResult] = Field(default_factory=list)
    detail: str = Field("", description="how it was verified, when not by replaying cases: 'nothing to replay: verified by the metric'")

    @property
    def failures(self) -> list[CaseResult]:
        return [case for case in self.cases if not case.passed]


class ReviewInput(BaseModel):
    incident_id: str
    dry_run: bool = False  # a rehearsal's review: written, but nothing joins the regression suite
    occurrence: str = ""
    runbook: Runbook
    target: TargetRef
    severity: Severity
    status: str
    repro: list[ReproCase] = Field(default_factory=list)
    actions: list[AppliedAction] = Field(default_factory=list)
    timeline: list[dict[str, Any]] = Field(default_factory=list)
    timeline_omitted: int = Field(0, description="entries a very long timeline dropped from its middle; history keeps them")
    evidence_sha256: str | None = None
    serious: bool = False
    report_deadline: str | None = None
    # What the Art. 73 report draft and the compliance mapping read (all optional: an input
    # recorded before they existed still decodes, and the draft says what it does not know).
    runbook_sha256: str = ""
    severity_reasons: list[str] = Field(default_factory=list)
    first_signal: Signal | None = Field(None, description="the signal that opened the incident, without its raw payload")
    signal_count: int = 0
    signal_sources: dict[str, int] = Field(default_factory=dict, description="signals by source: alert, user_report, audit_finding")
    findings: list[Finding] = Field(default_factory=list, description="what the confirm checks found")
    detectors_fired: list[str] = Field(default_factory=list)
    evidence: EvidenceRecord | None = None
    regulatory: RegulatoryClock | None = None
    stages: list[StageState] = Field(default_factory=list)
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    opened_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    reviewed_at: datetime | None = None
    objectives: list[ObjectiveOutcome] = Field(default_factory=list, description="time to acknowledge, contain, restore, as recorded")
    gate_waits: list[GateWait] = Field(default_factory=list, description="each wait for a person the lifecycle made")
    exposure: Exposure | None = Field(None, description="the blast radius: counts and ids, the deployers to inform")
    cause: Cause | None = Field(None, description="the bad change bisection named, or why none was")


class ComplianceItem(BaseModel):
    """One framework requirement, and what this incident did about it (or that it did not)."""

    framework: str
    reference: str
    requirement: str
    status: Literal["performed", "partly performed", "not performed"]
    evidence: list[str] = Field(default_factory=list, description="timeline entries, actions and keys from this incident")
    gaps: list[str] = Field(default_factory=list, description="what is missing or left to the review")


class ReviewResult(BaseModel):
    tasks: list[dict[str, Any]] = Field(default_factory=list)
    postmortem: str
    report_draft: str | None = None
    regression_cases_added: int = 0
    compliance_file: str | None = None
    compliance: dict[str, str] = Field(
        default_factory=dict, description="requirement reference -> status; the evidence is in compliance_file"
    )
    # Each document's sha256, checked when it is read back from the artefact store. Empty in a
    # history from before the store (the documents were files on the worker that wrote them).
    postmortem_sha256: str = ""
    report_draft_sha256: str | None = None
    compliance_sha256: str = ""
    tasks_file: str | None = Field(None, description="the review tasks as JSON, in the artefact store")
    tasks_sha256: str = ""


class Notification(BaseModel):
    incident_id: str
    kind: Literal["page", "escalation", "approval_needed", "action_failed", "report_reminder", "status"]
    recipients: list[str]
    message: str
    severity: Severity
    tier: int = 0
    dedup_id: str = Field(description="business identity of this notification, for idempotent delivery")
    dry_run: bool = Field(False, description="a rehearsal's notification: it goes to the console only, never pages anyone")


class NotifyResult(BaseModel):
    delivered: list[str] = Field(default_factory=list, description="channels that carry the notification (now or on an earlier attempt)")
    failed: list[str] = Field(default_factory=list, description="'channel: reason' for each channel that did not; no secrets")
    already_delivered: list[str] = Field(default_factory=list, description="channels skipped because an earlier attempt delivered them")
