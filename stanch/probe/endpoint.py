"""Where a probe goes: an OpenAI-compatible chat endpoint, as a target describes it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChatEndpoint:
    """`POST {base_url}/chat/completions` with `model` in the body and these headers.

    A target builds one when a probe is about to be sent (`Target.chat_endpoint`): the headers
    may hold secrets (an API key, the gateway's admin token), so an endpoint is never put in an
    activity's input or result, and its repr leaves the header values out.
    """

    base_url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeout_seconds: float = 60.0
    label: str = ""  # what a person calls it in a finding: "gateway", "openai target vllm"

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"

    def describe(self) -> str:
        """Where it goes, for findings and errors: never a header value."""
        return f"{self.label or 'endpoint'} ({self.url}, model {self.model})"
