"""What responders send to a running incident, and the receipt they get back.

The workflow's handler names are what a responder does: `acknowledge`, `approve`, `reject`,
`set_severity`, `triage`, `decide`, `resolve`, `record_report_filed`, `add_note`. Who decided
is filled in by the API from the responder's token, and the API vouches for the decision with
an Ed25519 signature (stanch.trust.assertions): without a valid one an update is refused by its
validator and an approval signal is recorded as refused, never counted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from stanch.models.signals import Severity

# Who decided is filled in by the API from the responder's token; a body may omit it.
WHO = Field("", description="who decides: set by the API from the token (claimed only under --insecure-dev)")
# The API's signature over the decision (stanch.trust.assertions): without a valid one it is refused.
VOUCHED = Field("", description="set by the API: its Ed25519 signature over the decision, checked with its public key; never a key")


class Acknowledgement(BaseModel):
    responder: str = WHO
    note: str = ""
    assertion: str = VOUCHED


class ApprovalDecision(BaseModel):
    """One responder's yes or no on a gated stage. `decision_id` deduplicates retries."""

    stage: str
    approver: str = WHO
    roles: list[str] = Field(default_factory=list)
    approve: bool = True
    comment: str = ""
    decision_id: str = ""
    assertion: str = VOUCHED


class SeverityChange(BaseModel):
    severity: Severity
    by: str = WHO
    roles: list[str] = Field(default_factory=list)
    reason: str
    assertion: str = VOUCHED


class TriageDecision(BaseModel):
    by: str = WHO
    outcome: Literal["confirmed", "false_positive"]
    reason: str
    assertion: str = VOUCHED


class FailureDecision(BaseModel):
    """What to do about an action that failed after its retries."""

    stage: str
    by: str = WHO
    choice: Literal["retry", "skip", "abort"]
    reason: str = ""
    assertion: str = VOUCHED


class ResolveRequest(BaseModel):
    """A responder declares the harm over: remaining work is skipped, restore and review run."""

    by: str = WHO
    reason: str
    assertion: str = VOUCHED


class ReportFiled(BaseModel):
    by: str = WHO
    reference: str
    filed_at: datetime | None = None
    assertion: str = VOUCHED


class Note(BaseModel):
    """A responder's note on the timeline: what they saw, tried or decided off-system."""

    by: str = WHO
    text: str = Field(min_length=1, max_length=4000)
    assertion: str = VOUCHED


class AnswerCorrection(BaseModel):
    """The answer a repro case should get, from a responder: a fine-tune trains the case on it
    instead of the runbook's refusal. The case is named by its number (1 is the first repro
    case) or by its prompt."""

    by: str = WHO
    case: int | None = Field(None, ge=1, description="the repro case's number, 1 for the first")
    prompt: str | None = Field(None, min_length=1, description="or the repro case's prompt, as the incident holds it")
    answer: str = Field(min_length=1, max_length=20000, description="what the fixed model should answer instead")
    reason: str = Field("", max_length=4000)
    assertion: str = VOUCHED

    @model_validator(mode="after")
    def _names_one_case(self) -> AnswerCorrection:
        if (self.case is None) == (self.prompt is None):
            raise ValueError("name the repro case by its number (case) or by its prompt, not both and not neither")
        if not self.answer.strip():
            raise ValueError("answer is blank: say what the fixed model should answer")
        return self


class DecisionReceipt(BaseModel):
    accepted: bool = True
    message: str
