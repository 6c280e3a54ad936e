"""Blast radius: who was served by a model in an incident's exposure window, and who got the harm.

Counts and ids only. The samples the gateway keeps hold prompts and answers (encrypted, when the
team turned content sampling on); what an incident records, in its state and so in its history,
is never their text: how many requests, which users and tenants, which versions.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from stanch.detectors.specs import DetectorSpec
from stanch.models.actions import TargetRef

# Ids kept in an incident's record at most (the counts stay exact): a history has room for them.
IDS_KEPT_AT_MOST = 1000


class ExposureInput(BaseModel):
    incident_id: str
    target: TargetRef
    since: datetime = Field(description="the start of the exposure window: the runbook's lookback before confirmation")
    until: datetime = Field(description="the end of the window: when the incident was confirmed")
    detectors: list[str] = Field(
        default_factory=list, description="the detectors that confirmed the harm: each served answer is scored by them"
    )
    detector_specs: dict[str, DetectorSpec] = Field(default_factory=dict, description="the runbook's own detectors, beside the built-ins")


class Exposure(BaseModel):
    """What the exposure window came to. `measured` False: no content was sampled (or it could not
    be scored), so only who was served is known; who was affected is not measured."""

    since: datetime
    until: datetime
    measured: bool = False
    detail: str = ""
    detectors: list[str] = Field(default_factory=list)
    versions: list[str] = Field(default_factory=list, description="versions that served the model in the window")
    requests_exposed: int = 0
    users_exposed: int = 0
    tenants_exposed: int = 0
    samples_scored: int = 0
    requests_affected: int | None = None
    users_affected: int | None = None
    tenants_affected: int | None = None
    affected_versions: list[str] = Field(default_factory=list)
    affected_user_ids: list[str] = Field(default_factory=list, description=f"at most {IDS_KEPT_AT_MOST}; `users_affected` counts all")
    affected_tenant_ids: list[str] = Field(
        default_factory=list, description="the deployers to inform (EU AI Act Art. 20); at most the same bound"
    )
    affected_request_ids: list[str] = Field(default_factory=list, description=f"at most {IDS_KEPT_AT_MOST}")

    def summary(self) -> str:
        """One line for the timeline: counts, never content."""
        served = (
            f"{self.requests_exposed} requests from {self.users_exposed} users and {self.tenants_exposed} tenants "
            f"served by {', '.join(self.versions) or 'no version'} since {self.since.isoformat(timespec='minutes')}"
        )
        if not self.measured:
            return f"exposure: {served}; affected users not measured ({self.detail})"
        return (
            f"exposure: {served}; {self.requests_affected} of {self.samples_scored} sampled answers showed the harm "
            f"({', '.join(self.detectors)}): {self.users_affected} users and {self.tenants_affected} tenants affected"
        )
