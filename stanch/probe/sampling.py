"""Every sample of one repro case, the detectors on each answer, and the threshold.

A case reproduces when at least `harmful_at_least` of its `samples` answers are harmful (a
detector hit). A sample no detector could decide on (a moderation endpoint timed out, a judge
gave no verdict) is counted apart: it is neither harmful nor clean, and the caller says so.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from stanch.detectors.registry import Detectors
from stanch.probe.client import ChatAnswer, ChatRequest, ask
from stanch.probe.endpoint import ChatEndpoint
from stanch.runbooks.schema import Sampled

INCIDENT_HEADER = "x-stanch-incident"  # upstream logs tell probes from users by it


class Sampling(BaseModel):
    """How a case is asked: the runbook's `samples`, `temperature`, `max_tokens`, `harmful_at_least`."""

    samples: int = Field(1, ge=1, le=50)
    temperature: float = Field(0.0, ge=0, le=2)
    harmful_at_least: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None

    @classmethod
    def of(cls, block: Sampled | None) -> Sampling:
        """The sampling a runbook's confirm check or verify block asks for (None: one sample at 0)."""
        if block is None:
            return cls()
        return cls(
            samples=block.samples, temperature=block.temperature, harmful_at_least=block.harmful_at_least, max_tokens=block.max_tokens
        )

    def describe(self) -> str:
        samples = f"{self.samples} sample{'s' if self.samples != 1 else ''}"
        return f"{samples} at temperature {self.temperature:g}, threshold ≥{self.harmful_at_least}"


class SampleVerdict(BaseModel):
    """One answer and what the detectors made of it (evidence masked)."""

    status_code: int
    model_version: str | None = None
    refusal_code: str | None = None
    refusal_incident: str | None = None
    hits: list[str] = Field(default_factory=list, description="'detector: masked evidence'")
    detectors: list[str] = Field(default_factory=list, description="the detectors that hit")
    undecided: list[str] = Field(default_factory=list, description="'detector: why it could not decide'")

    @property
    def harmful(self) -> bool:
        return bool(self.hits)

    @property
    def is_undecided(self) -> bool:
        """No detector hit, and one could not decide: the sample says nothing either way."""
        return not self.hits and bool(self.undecided)


class CaseProbe(BaseModel):
    """All samples of one case, and whether they reach the threshold."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    threshold: int
    samples: list[SampleVerdict] = Field(default_factory=list)

    @property
    def harmful(self) -> int:
        return sum(sample.harmful for sample in self.samples)

    @property
    def undecided(self) -> int:
        return sum(sample.is_undecided for sample in self.samples)

    @property
    def refused(self) -> int:
        return sum(sample.status_code != 200 for sample in self.samples)

    @property
    def reproduced(self) -> bool:
        return self.harmful >= self.threshold

    @property
    def detectors(self) -> list[str]:
        return sorted({name for sample in self.samples for name in sample.detectors})

    @property
    def evidence(self) -> list[str]:
        """Each distinct hit once, in the order found."""
        return list(dict.fromkeys(hit for sample in self.samples for hit in sample.hits))

    @property
    def undecided_reasons(self) -> list[str]:
        return list(dict.fromkeys(reason for sample in self.samples if sample.is_undecided for reason in sample.undecided))

    @property
    def model_version(self) -> str | None:
        return next((sample.model_version for sample in reversed(self.samples) if sample.model_version), None)

    def tally(self) -> str:
        """ "harmful in 2 of 5 samples (threshold ≥1)", and what was refused or undecided."""
        text = f"harmful in {self.harmful} of {len(self.samples)} samples (threshold ≥{self.threshold})"
        if self.refused:
            text += f", {self.refused} refused"
        if self.undecided:
            text += f", {self.undecided} undecided"
        return text


def user_text(messages: list[dict[str, Any]]) -> str:
    """What the user typed in the conversation: a secret the user gave is no leak when echoed."""
    parts: list[str] = []
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
    return "\n".join(parts)


async def judge(detectors: Detectors, names: list[str], answer: ChatAnswer, prompt: str) -> SampleVerdict:
    """The detectors on one answer; a refusal carries no output to judge. An empty answer is
    judged like any other: a model that answers nothing is what `low_quality` looks for."""
    verdict = SampleVerdict(
        status_code=answer.status_code,
        model_version=answer.model_version,
        refusal_code=answer.refusal_code,
        refusal_incident=answer.refusal_incident,
    )
    if answer.refused:
        return verdict
    scan = await detectors.scan(names, answer.output, prompt=prompt)
    verdict.hits = [f"{hit.detector}: {hit.evidence}" for hit in scan.hits]
    verdict.detectors = sorted({hit.detector for hit in scan.hits})
    verdict.undecided = [f"{undecided.detector}: {undecided.reason}" for undecided in scan.undecided]
    return verdict


async def probe_case(
    endpoint: ChatEndpoint,
    messages: list[dict[str, Any]],
    *,
    detectors: Detectors,
    names: list[str],
    sampling: Sampling,
    incident_id: str,
    tools: list[dict[str, Any]] | None = None,
) -> CaseProbe:
    """Ask the case `sampling.samples` times, offering its `tools`, and judge every answer;
    raises ProbeFailed."""
    request = ChatRequest(
        messages=messages,
        tools=tools or [],
        samples=sampling.samples,
        temperature=sampling.temperature,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
    )
    answers = await ask(endpoint, request, headers={INCIDENT_HEADER: incident_id})
    prompt = user_text(messages)
    verdicts = [await judge(detectors, names, answer, prompt) for answer in answers]
    return CaseProbe(messages=messages, tools=tools or [], threshold=sampling.harmful_at_least, samples=verdicts)
