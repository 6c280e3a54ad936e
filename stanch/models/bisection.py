"""Bisection of the bad change: what it is asked, and the cause it names (or why it named none).

The cause names changes by their number in the gateway's deployment log, their version and the
caller's change id; a system prompt only by its sha256. Never a prompt, an answer or evidence:
it lives in the incident's history, the postmortem and the Art. 73 draft.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from stanch.detectors.specs import DetectorSpec
from stanch.models.actions import TargetRef
from stanch.models.signals import ReproCase
from stanch.runbooks.schema import ConfirmCheck

ChangeOutcome = Literal["good", "bad", "not_judged"]


class ChangeVerdict(BaseModel):
    """One change of the exposure window, replayed."""

    sequence: int
    release_version: str
    deployed_at: datetime | None = None
    source: str = ""
    change_id: str | None = None
    description: str | None = None
    system_prompt_sha256: str | None = None
    guardrails: int = 0
    verdict: ChangeOutcome = "not_judged"
    reason: str = ""

    def describe(self) -> str:
        named = f" ({self.change_id})" if self.change_id else ""
        return f"change #{self.sequence}{named}, version {self.release_version}"


class Cause(BaseModel):
    """What bisection found. `first_bad` and `last_good` are change numbers; both None and `note`
    says why when nothing was named (no log, no repro cases, all bad, all good, the gateway away)."""

    ran: bool = False
    considered: list[ChangeVerdict] = Field(default_factory=list)
    first_bad: int | None = None
    last_good: int | None = None
    last_good_version: str | None = None
    # Changes between the last good and the first bad that could not be replayed: the cause may be one of them.
    unjudged_between: list[int] = Field(default_factory=list)
    window_start: datetime | None = None
    window_end: datetime | None = None
    note: str = ""

    def change(self, sequence: int | None) -> ChangeVerdict | None:
        return next((c for c in self.considered if c.sequence == sequence), None)

    def summary(self) -> str:
        """One line for the timeline, the postmortem and the report draft."""
        bad, good = self.change(self.first_bad), self.change(self.last_good)
        if bad is None:
            return f"no change named as the cause: {self.note}"
        line = f"the first bad change is {bad.describe()}"
        if good is not None:
            line += f"; the last good one before it is {good.describe()}"
        if self.unjudged_between:
            line += f" (changes {', '.join(f'#{n}' for n in self.unjudged_between)} between them could not be replayed)"
        if self.note:
            line += f"; {self.note}"
        return line


class BisectInput(BaseModel):
    incident_id: str
    target: TargetRef
    checks: list[ConfirmCheck] = Field(default_factory=list, description="the runbook's probe checks: detectors and sampling")
    repro: list[ReproCase] = Field(default_factory=list)
    detector_specs: dict[str, DetectorSpec] = Field(default_factory=dict)
    window_start: datetime
    window_end: datetime
    max_changes: int = 20
