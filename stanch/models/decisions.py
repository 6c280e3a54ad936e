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

from pydantic import BaseModel, Field

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


class DecisionReceipt(BaseModel):
    accepted: bool = True
    message: str
