"""Request bodies of the OpenAI API routes the demo serves, as pydantic models.

Fields the demo does not use are still accepted (extra="allow"): a proxy forwards whatever its
clients send, and an OpenAI-compatible server should not refuse a request over `user` or
`logprobs`. What it does use is checked, and a bad value is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_CHOICES = 16


class _OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_OpenAIBody):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(_OpenAIBody):
    include_usage: bool = False


class _Sampled(_OpenAIBody):
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2, description="OpenAI's default is 1")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None


class CompletionRequest(_Sampled):
    prompt: str | list[str] = Field(description="one prompt, or several (one set of choices each)")


class EmbeddingRequest(_OpenAIBody):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    dimensions: int | None = Field(default=None, ge=1, le=3072)
    encoding_format: Literal["float", "base64"] = "float"


class ModerationRequest(_OpenAIBody):
    input: str | list[str] | list[dict[str, Any]]
    model: str | None = None


class FineTuningJobRequest(_OpenAIBody):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    hyperparameters: dict[str, Any] | None = None
    seed: int | None = None
