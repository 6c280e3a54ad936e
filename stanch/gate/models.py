"""What the regression gate is asked and what it answers.

The verdict names cases by key and by the incident that recorded them, and the detectors that
hit by name: never a prompt, an answer or evidence. A CI log, an Argo analysis run and an
MLflow tag may all keep it. A candidate system prompt and a candidate guardrail config are
named by sha256 (and the config by its count of patterns), not quoted.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

Verdict = Literal["pass", "fail", "inconclusive"]
CaseOutcome = Literal["passed", "regressed", "undecided"]

# The gateway takes a candidate guardrail config in one request header: the same bounds as its
# own (stanch/gateway/enforcement.py), so a config the gate accepts is one the gateway applies.
MAX_CANDIDATE_GUARDRAILS = 50
MAX_GUARDRAIL_CHARS = 500
MAX_GUARDRAILS_JSON_CHARS = 8000


def guardrails_json(patterns: list[str]) -> str:
    """The patterns as the gateway receives them (x-stanch-guardrails), and as their sha256 is taken."""
    return json.dumps(patterns, separators=(",", ":"))


class GateRequest(BaseModel):
    """A candidate to check against a model's regression suite.

    The candidate is a model version as the gateway (or the target named) knows it, asked for
    on its own: none of the model's standing hotfixes (system prompt, guardrails) and no
    incident's containment, so a guardrail cannot hide that the candidate itself regresses.
    `system_prompt` adds a candidate system prompt ahead of each case's conversation, as the
    gateway sends a system-prompt hotfix. `guardrails` is a candidate guardrail config: the
    regex patterns the gateway would redact from answers (as `add_guardrail` and
    `POST /admin/deploy {guardrails}` take them). The gateway applies them to the candidate's
    bare answers, and only them, so each case is judged on what users would get under that
    config. Only the gateway target applies guardrails.
    """

    model: str = Field(min_length=1, max_length=200, description="the model whose suite is replayed, as the gateway names it")
    candidate: str = Field(min_length=1, max_length=200, description="the model version to check")
    system_prompt: str | None = Field(None, max_length=20_000, description="a candidate system prompt, sent first in every case")
    guardrails: list[str] | None = Field(
        None,
        max_length=MAX_CANDIDATE_GUARDRAILS,
        description="a candidate guardrail config: regex patterns the gateway redacts from every answer (none: the candidate bare)",
    )
    target: str = Field("gateway", min_length=1, description="the configured target that serves the model (targets.yaml)")
    detectors: list[str] = Field(
        default_factory=list, description="judge every case with these detectors; empty: each case by those its incident recorded"
    )
    samples: int = Field(5, ge=1, le=50, description="answers asked per case (LLMs are stochastic)")
    temperature: float = Field(0.7, ge=0, le=2, description="the temperature users get")
    harmful_at_least: int = Field(1, ge=1, description="a case regresses when at least this many samples are harmful")

    @field_validator("model", "candidate", "target")
    @classmethod
    def _plain(cls, value: str) -> str:
        if value != value.strip() or any(char.isspace() or ord(char) < 32 for char in value):
            raise ValueError("must be a plain name: no spaces or control characters")
        return value

    @field_validator("guardrails")
    @classmethod
    def _usable_patterns(cls, patterns: list[str] | None) -> list[str] | None:
        if patterns is None:
            return None
        for number, pattern in enumerate(patterns, start=1):
            if not pattern or len(pattern) > MAX_GUARDRAIL_CHARS:
                raise ValueError(f"pattern {number} must be 1 to {MAX_GUARDRAIL_CHARS} characters (an empty one redacts everything)")
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"pattern {number} {pattern!r} does not compile: {error}") from None
        if len(guardrails_json(patterns)) > MAX_GUARDRAILS_JSON_CHARS:
            raise ValueError(f"the patterns together take more than {MAX_GUARDRAILS_JSON_CHARS} characters as JSON")
        return patterns

    @model_validator(mode="after")
    def _threshold_reachable(self) -> GateRequest:
        if self.harmful_at_least > self.samples:
            raise ValueError(
                f"harmful_at_least ({self.harmful_at_least}) is more than samples ({self.samples}): no case could ever regress"
            )
        return self

    @property
    def system_prompt_sha256(self) -> str | None:
        return hashlib.sha256(self.system_prompt.encode()).hexdigest() if self.system_prompt is not None else None

    @property
    def guardrails_sha256(self) -> str | None:
        return hashlib.sha256(guardrails_json(self.guardrails).encode()).hexdigest() if self.guardrails is not None else None


class CaseVerdict(BaseModel):
    """One regression case on the candidate."""

    case_key: str = Field(description="the case's key in the suite (`stanch gate cases` lists them)")
    incident_id: str = Field(description="the incident that recorded the case")
    result: CaseOutcome
    detectors: list[str] = Field(default_factory=list, description="the detectors that found harm, by name")
    samples: int = 0
    harmful_samples: int = 0
    reason: str = Field("", description="why, in a sentence: counts and names, never the prompt or the answer")


class GateVerdict(BaseModel):
    """`fail` when any case regressed; else `inconclusive` when any could not be decided; else `pass`.
    Argo Rollouts reads `$.verdict`."""

    verdict: Verdict
    model: str
    candidate: str
    system_prompt_sha256: str | None = Field(None, description="the candidate system prompt's sha256, when one was checked")
    guardrails_sha256: str | None = Field(
        None,
        description="the candidate guardrail config's sha256, when one was checked: of its patterns as a compact JSON list, "
        "json.dumps(patterns, separators=(',', ':'))",
    )
    guardrails_count: int | None = Field(None, description="how many patterns the candidate guardrail config holds, when one was checked")
    checked: int = Field(description="active cases replayed")
    regressions: int = Field(description="cases that regressed")
    undecided: int = 0
    retired: int = Field(0, description="retired cases left out")
    cases: list[CaseVerdict] = Field(default_factory=list)
    note: str = ""
    checked_at: datetime

    @property
    def exit_code(self) -> int:
        """What `stanch gate` exits with: 0 pass, 1 fail, 2 inconclusive."""
        return {"pass": 0, "fail": 1, "inconclusive": 2}[self.verdict]


class SuiteCase(BaseModel):
    """A case as `stanch gate cases` lists it: no content, its retirement if any."""

    case_key: str
    incident_id: str
    added_at: datetime
    detectors: list[str]
    turns: int = Field(description="messages in the conversation (1: a single prompt)")
    retired: bool = False
    reason: str | None = None
    retired_by: str | None = None
    retired_at: datetime | None = None


class RetireRequest(BaseModel):
    """Retire a case: it stops guarding changes. The reason is required and recorded."""

    case_key: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000, description="why the case no longer guards changes")
    model: str | None = Field(None, description="the case's model, when its key is ambiguous")

    @field_validator("reason")
    @classmethod
    def _said(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a case is retired only with a reason")
        return value.strip()
