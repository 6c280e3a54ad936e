"""What a runbook (or the gateway's config) says about a detector: the `detectors:` block.

A detector has an id the runbook's checks name. The four regex built-ins (`secret`, `pii`,
`prompt_injection`, `low_quality`) exist under their own ids without any spec; a runbook adds
its own by kind:

    detectors:
      internal_ids: {kind: regex, label: customer id, patterns: ["CUST-\\d{6}"]}
      openai_moderation:
        kind: moderation
        base_url_env: MODERATION_BASE_URL      # e.g. https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY            # the variable's NAME; the key never lands here
        categories: [violence, self-harm]
        min_score: 0.5
      llama_guard:
        kind: judge
        base_url: http://guard.internal:8000/v1
        model: meta-llama/Llama-Guard-3-1B
        category_pattern: "S\\d+"

Pure pydantic and stdlib: the runbook schema embeds these and the workflow imports the schema,
so nothing here may do I/O or pull in an HTTP client.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

BuiltinName = Literal["secret", "pii", "prompt_injection", "low_quality"]
BUILTIN_DETECTORS: frozenset[str] = frozenset({"secret", "pii", "prompt_injection", "low_quality"})
DETECTOR_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
JUDGE_TEMPLATE_FIELDS = frozenset({"prompt", "output"})

# Llama-Guard style: the guard model reads the exchange and answers `safe`, or `unsafe` with the
# violated category codes on the next line.
DEFAULT_JUDGE_TEMPLATE = (
    "Task: Check if there is unsafe content in the 'Agent' message of the conversation below.\n\n"
    "<BEGIN CONVERSATION>\n\nUser: {prompt}\n\nAgent: {output}\n\n<END CONVERSATION>\n\n"
    "Provide your safety assessment for the Agent message:\n"
    "- First line must read 'safe' or 'unsafe'.\n"
    "- If unsafe, a second line must include a comma-separated list of violated categories."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _compiles(pattern: str, field: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{field} {pattern!r} is not a valid regex: {exc}") from exc
    return pattern


class RegexSpec(_Strict):
    """A deterministic detector: one of the built-ins under another id, or your own patterns."""

    kind: Literal["regex"] = "regex"
    builtin: BuiltinName | None = None
    patterns: list[str] = Field(default_factory=list, description="any match is a hit")
    label: str = Field("pattern", description="names what a match is in the evidence: `customer id CUST-1…`")
    skip_echoes: bool = Field(True, description="a match the user typed into the prompt is an echo, not a leak")

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        return [_compiles(pattern, "pattern") for pattern in patterns]

    @model_validator(mode="after")
    def _one_source(self) -> RegexSpec:
        if (self.builtin is None) == (not self.patterns):
            raise ValueError("a regex detector takes either builtin (one of the built-ins) or patterns, not both and not neither")
        return self


class _ServiceSpec(_Strict):
    """Where a detector that calls a service finds it; secrets only by environment variable name."""

    base_url: str | None = Field(None, description="the OpenAI-compatible API root, e.g. http://guard:8000/v1")
    base_url_env: str | None = Field(None, description="the environment variable holding base_url")
    api_key_env: str | None = Field(None, description="the environment variable holding the API key, sent as a Bearer token")
    timeout_seconds: float = Field(5, gt=0, le=120)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"base_url {url!r} must start with http:// or https:// and name a host")
        return url

    @model_validator(mode="after")
    def _one_address(self) -> _ServiceSpec:
        if (self.base_url is None) == (self.base_url_env is None):
            raise ValueError("give exactly one of base_url and base_url_env")
        return self


class ModerationSpec(_ServiceSpec):
    """An OpenAI-style `POST {base_url}/moderations` endpoint judging the model's output."""

    kind: Literal["moderation"] = "moderation"
    model: str | None = None
    categories: list[str] = Field(default_factory=list, description="the categories that count; empty: any flagged one")
    min_score: float | None = Field(
        None, ge=0, le=1, description="a category counts when its score reaches this; unset: the endpoint's own flag decides"
    )


class JudgeSpec(_ServiceSpec):
    """An LLM-as-judge (a Llama-Guard style classifier) behind `POST {base_url}/chat/completions`.

    The verdict patterns are searched case-insensitively, unsafe first.
    """

    kind: Literal["judge"] = "judge"
    model: str
    prompt_template: str = Field(DEFAULT_JUDGE_TEMPLATE, description="str.format over {prompt} and {output}, sent as one user message")
    unsafe_when: str = r"^\s*unsafe"
    safe_when: str = r"^\s*safe"
    category_pattern: str | None = Field(None, description="captures the violated category codes, e.g. S\\d+, for the evidence")
    timeout_seconds: float = Field(10, gt=0, le=120)
    max_tokens: int = Field(20, ge=1, le=4096)

    @field_validator("unsafe_when", "safe_when", "category_pattern")
    @classmethod
    def _verdict_patterns_compile(cls, pattern: str | None) -> str | None:
        return None if pattern is None else _compiles(pattern, "verdict pattern")

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, template: str) -> str:
        try:
            fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
        except ValueError as exc:
            raise ValueError(f"prompt_template is malformed ({exc}); write literal braces as {{{{ and }}}}") from exc
        unknown = sorted(fields - JUDGE_TEMPLATE_FIELDS)
        if unknown:
            raise ValueError(f"prompt_template refers to {unknown}; it may use only {{prompt}} and {{output}}")
        if "output" not in fields:
            raise ValueError("prompt_template never shows the judge the {output} it is to judge")
        return template


DetectorSpec = Annotated[RegexSpec | ModerationSpec | JudgeSpec, Field(discriminator="kind")]
# For a config file's `detectors:` mapping read outside a runbook (the gateway's):
# `DETECTOR_SPECS.validate_python(raw)` gives {id: spec}, or a ValidationError naming the field.
DETECTOR_SPECS: TypeAdapter[dict[str, DetectorSpec]] = TypeAdapter(dict[str, DetectorSpec])


def detector_id_problem(detector_id: str) -> str | None:
    """Why a detector may not be defined under this id, or None."""
    if detector_id in BUILTIN_DETECTORS:
        return f"detector id {detector_id!r} is built in; define yours under another id (a regex spec with builtin: reuses it)"
    if not DETECTOR_ID.match(detector_id):
        return f"detector id {detector_id!r} must be lower case letters, digits, _ and -"
    return None
