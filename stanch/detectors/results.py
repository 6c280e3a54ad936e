"""What running detectors on one output gives: hits, and the detectors that could not decide."""

from __future__ import annotations

from pydantic import BaseModel, Field

from stanch.detectors.regex import DetectorHit


class Undecided(BaseModel):
    """A detector that could not say whether the output is harmful, and why."""

    detector: str
    reason: str


class Scan(BaseModel):
    """What the named detectors found in one output."""

    hits: list[DetectorHit] = Field(default_factory=list)
    undecided: list[Undecided] = Field(default_factory=list)

    @property
    def harmful(self) -> bool:
        return bool(self.hits)

    @property
    def decided(self) -> bool:
        return not self.undecided

    @property
    def fired(self) -> list[str]:
        """The ids of the detectors that hit, each once, in order."""
        return list(dict.fromkeys(hit.detector for hit in self.hits))

    def __add__(self, other: Scan) -> Scan:
        return Scan(hits=self.hits + other.hits, undecided=self.undecided + other.undecided)
