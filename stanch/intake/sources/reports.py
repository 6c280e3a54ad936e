"""People, not monitors: a user's (or support agent's) report of harmful output, and an
internal audit or red-team finding. Both are Stanch's own schemas.

Unknown fields are refused here (unlike the senders' payloads): these schemas are ours, and a
misspelt `prompt_excerpt` must be a 422, not a report silently missing its repro case.
Without an id from the reporter, the id is the sha256 of the canonical body, so resending
the same report is recognised as the same report.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from stanch.intake.sources.common import canonical_sha256
from stanch.models.signals import ReproCase, Severity, Signal, SignalSource

HARMFUL_OUTPUT = "harmful-output"


class _OwnSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserReport(_OwnSchema):
    """A user or support agent reporting something the AI product said."""

    reporter: str = Field(min_length=1, description="who reports: a user id, an agent's name or a ticket queue")
    surface: str = Field(min_length=1, description="where it happened: product surface, app, endpoint")
    model: str | None = Field(None, description="the model, if known")
    model_version: str | None = Field(None, description="the model version, if known")
    # Sizes are checked in bytes at intake (stanch.intake.sources.limits: 413 naming the field).
    prompt_excerpt: str | None = Field(None, description="what the user asked (becomes a repro case); at most 32 KiB")
    response_excerpt: str | None = Field(None, description="what the model answered; at most 32 KiB")
    # A report to this endpoint is about harmful output unless the reporter says otherwise.
    category: str = Field(HARMFUL_OUTPUT, min_length=1, description="incident class, e.g. harmful-output, pii-leak")
    people_affected: int | None = Field(None, ge=0, description="how many people saw it, if known")
    report_id: str | None = Field(None, min_length=1, description="the reporter's id for this report (deduplicates resends)")
    text: str = Field("", description="the report in the reporter's words; at most 32 KiB")
    labels: dict[str, str] = Field(default_factory=dict, description="extra routing labels (ticket id, region...)")
    reported_at: datetime | None = None


class AuditFinding(_OwnSchema):
    """An internal audit or red-team finding: a control or test that failed."""

    auditor: str = Field(min_length=1, description="the team or person filing the finding")
    control: str = Field(min_length=1, description="the control or test that failed")
    evidence: list[str] = Field(default_factory=list, description="texts and links; links are kept as links")
    severity: Severity = Field(description="the severity the auditor claims")
    model: str | None = None
    model_version: str | None = None
    category: str | None = Field(None, description="incident class; without one the finding goes to triage")
    finding_id: str | None = Field(None, min_length=1, description="the auditor's id for this finding (deduplicates resends)")
    repro_prompts: list[str] = Field(default_factory=list, description="prompts that reproduce the failure")
    summary: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    found_at: datetime | None = None


def is_link(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def user_report_signal_id(report: UserReport) -> str:
    return f"user_report:{report.report_id or 'sha256-' + canonical_sha256(report.model_dump(mode='json'))}"


def audit_finding_signal_id(finding: AuditFinding) -> str:
    return f"audit_finding:{finding.finding_id or 'sha256-' + canonical_sha256(finding.model_dump(mode='json'))}"


def user_report_signals(report: UserReport) -> list[Signal]:
    labels = {**report.labels, "surface": report.surface}
    if report.people_affected is not None:
        labels["people_affected"] = str(report.people_affected)
    repro = [ReproCase(prompt=report.prompt_excerpt, output=report.response_excerpt)] if report.prompt_excerpt else []
    first_line = report.text.strip().splitlines()[0][:120] if report.text.strip() else report.category
    return [
        Signal(
            signal_id=user_report_signal_id(report),
            source=SignalSource.user_report,
            sender="user_report",
            title=f"User report ({report.surface}): {first_line}",
            description=report.text,
            labels=labels,
            category=report.category,
            model=report.model or labels.get("model"),
            model_version=report.model_version or labels.get("model_version"),
            repro=repro,
            observed_at=report.reported_at,
            raw=report.model_dump(mode="json"),
        )
    ]


def audit_finding_signals(finding: AuditFinding) -> list[Signal]:
    labels = {**finding.labels, "control": finding.control, "auditor": finding.auditor, "severity": finding.severity.value}
    texts = [item for item in finding.evidence if not is_link(item)]
    return [
        Signal(
            signal_id=audit_finding_signal_id(finding),
            source=SignalSource.audit_finding,
            sender="audit_finding",
            title=f"Audit finding: {finding.control} failed",
            description="\n".join([finding.summary, *texts]).strip(),
            labels=labels,
            severity_hint=finding.severity,
            category=finding.category or labels.get("category"),
            model=finding.model or labels.get("model"),
            model_version=finding.model_version or labels.get("model_version"),
            repro=[ReproCase(prompt=prompt) for prompt in finding.repro_prompts if prompt],
            links=[item for item in finding.evidence if is_link(item)],
            observed_at=finding.found_at,
            raw=finding.model_dump(mode="json"),
        )
    ]
