"""Shadow-verified restore: what the activity is asked and what it found.

The result names failing samples by id and by the detectors that found them harmful, never by
their content: history is the audit record, and a leak must not be copied into it. A responder
reads the failing answers themselves at the gateway (`read_at`).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from stanch.detectors.specs import DetectorSpec
from stanch.models.actions import TargetRef

UNREADABLE = "unreadable"  # the gateway's outcome for an answer it cannot open (its sample key rotated or gone)
KEY_SETTINGS = "STANCH_GATEWAY_SAMPLE_KEY or STANCH_GATEWAY_SAMPLE_KEY_FILE"


class ShadowInput(BaseModel):
    incident_id: str
    target: TargetRef
    idempotency_key: str = Field(description="the incident's: the same key opens (and closes) the same shadow once")
    version: str = Field("release", description="the fixed version: the one verification passed on")
    detectors: list[str] = Field(description="the runbook's verify detectors")
    detector_specs: dict[str, DetectorSpec] = Field(default_factory=dict)
    clean_requests: int
    sample_rate: float
    limit: int
    timeout_seconds: float


class FailingSample(BaseModel):
    id: str = Field(description="the mirrored answer's id at the gateway")
    detectors: list[str] = Field(default_factory=list, description="the detectors that found it harmful")


class ShadowResult(BaseModel):
    passed: bool
    shadow_id: str
    clean: int = 0
    needed: int = 0
    mirrored: int = Field(0, description="mirrored answers scored")
    unreadable: int = Field(0, description="mirrored answers the gateway could not open: never counted clean")
    failing: list[FailingSample] = Field(default_factory=list)
    timed_out: bool = False
    limit_reached: bool = False
    read_at: str = Field("", description="where a responder reads the failing answers (the gateway's admin API)")

    def all_unreadable(self) -> bool:
        """Enough came back to decide, and the gateway could open none of them."""
        return self.unreadable >= max(self.needed, 1) and self.clean == 0 and not self.failing

    def summary(self) -> str:
        """In a sentence, for the timeline and the page that asks a human."""
        clean = f"{self.clean} of {self.needed} clean mirrored requests"
        if self.passed:
            return f"shadow {self.shadow_id}: {clean} on the fixed version ({self.mirrored} mirrored)"
        if self.failing:
            named = ", ".join(f"{s.id} ({', '.join(s.detectors)})" for s in self.failing)
            return (
                f"shadow {self.shadow_id}: {len(self.failing)} mirrored request(s) came back harmful on the fixed version after "
                f"{clean}: {named}; read them at {self.read_at}"
            )
        unreadable = (
            f"; {self.unreadable} mirrored answer(s) could not be read at the gateway: its sample key ({KEY_SETTINGS}) "
            "was rotated or is missing"
            if self.unreadable
            else ""
        )
        if self.all_unreadable():
            return f"shadow {self.shadow_id}: {clean}{unreadable}"
        why = "the shadow's limit was reached" if self.limit_reached else "the shadow's timeout passed"
        return f"shadow {self.shadow_id}: only {clean} before {why} ({self.mirrored} mirrored){unreadable}"
