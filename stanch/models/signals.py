"""What arrives: signals (alerts, user reports, audit findings), their severity and repro cases.

New fields get defaults so running incidents keep decoding (DESIGN.md "Temporal conventions").
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator


class Severity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class SignalSource(StrEnum):
    alert = "alert"
    user_report = "user_report"
    audit_finding = "audit_finding"


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class ReproCase(BaseModel):
    """A conversation that reproduced (or is reported to reproduce) the harm.

    `messages` are OpenAI chat messages (`{"role": "user", "content": "..."}`, system and
    assistant turns too); a case written before them, or reported as a single prompt, has only
    `prompt`, which stands for one user message. Where both are given the messages win.

    `tools` are the OpenAI tool definitions offered with the conversation
    (`{"type": "function", "function": {"name": ..., "parameters": ...}}`): an agent that calls
    a destructive tool only does so when it is offered one, so a probe offers them too. Cases
    recorded before tools existed have none, and replay as they always did.
    """

    prompt: str = ""
    messages: list[dict[str, Any]] = Field(default_factory=list)
    output: str | None = Field(None, description="what the user saw, as reported (intake masks secrets in it)")
    output_hits: list[str] = Field(
        default_factory=list,
        description="what detectors found in the reported answer before intake masked it: 'detector: masked evidence'",
    )
    detectors: list[str] = Field(default_factory=list)
    tools: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI tool definitions offered with the conversation")

    @field_validator("messages")
    @classmethod
    def _chat_messages(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for number, message in enumerate(messages, start=1):
            if message.get("role") not in CHAT_ROLES:
                raise ValueError(f"message {number}: role must be one of {', '.join(CHAT_ROLES)}, not {message.get('role')!r}")
        return messages

    @field_validator("tools")
    @classmethod
    def _tool_definitions(cls, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for number, tool in enumerate(tools, start=1):
            function = tool.get("function")
            if tool.get("type", "function") != "function" or not isinstance(function, dict) or not function.get("name"):
                raise ValueError(
                    f'tool {number}: an OpenAI tool definition is {{"type": "function", "function": {{"name": ..., '
                    f'"parameters": {{...}}}}}}, not {json.dumps(tool)[:120]}'
                )
        return tools

    @model_validator(mode="after")
    def _prompt_of_a_conversation(self) -> ReproCase:
        # What reads `prompt` alone (the regression suite, a review, merging by prompt) sees the
        # conversation's last user turn rather than nothing.
        if not self.prompt and self.messages:
            users = [m["content"] for m in self.messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
            self.prompt = users[-1] if users else ""
        return self

    def conversation(self) -> list[dict[str, Any]]:
        """The messages as reported, the model's answer included when the reporter gave it."""
        return [dict(message) for message in self.messages] if self.messages else [{"role": "user", "content": self.prompt}]

    def question(self) -> list[dict[str, Any]]:
        """What was asked: the conversation up to the model's answer. A reported answer at the end
        is the harm itself: a probe asks again instead of asking the model to go on after it, and a
        fine-tune puts the fix's answer in its place."""
        messages = self.conversation()
        while len(messages) > 1 and messages[-1].get("role") in ("assistant", "tool"):
            messages.pop()
        return messages

    def tool_names(self) -> list[str]:
        """The names of the tools offered with the conversation."""
        return [str(tool["function"]["name"]) for tool in self.tools]

    def key(self) -> str:
        """What makes two cases the same case: the prompt, or the whole conversation, and the
        tools offered with it (the same words with a tool offered can make an agent act)."""
        if self.tools:
            return json.dumps({"messages": self.conversation(), "tools": self.tools}, sort_keys=True, ensure_ascii=False)
        if not self.messages:
            return self.prompt
        return json.dumps(self.messages, sort_keys=True, ensure_ascii=False)

    def describe(self, width: int = 80) -> str:
        """The case as a person reads it in a finding: its (last) user prompt, shortened, and
        the tools it offers."""
        text = self.prompt if len(self.prompt) <= width else self.prompt[: width - 1] + "…"
        described = f"{text!r} (a {len(self.messages)}-message conversation)" if len(self.messages) > 1 else repr(text)
        if self.tools:
            described += f" offering tools {', '.join(self.tool_names())}"
        return described


class Signal(BaseModel):
    """One alert, user report or audit finding, normalised."""

    signal_id: str = Field(min_length=1, description="the sender's id for this signal: repeats are deduplicated by it")
    source: SignalSource = SignalSource.alert
    sender: str = "generic"
    status: Literal["firing", "resolved", "acknowledged"] = Field(
        "firing", description="firing is harm; resolved and acknowledged are closing notices, recorded and never counted as harm"
    )
    title: str = ""
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    severity_hint: Severity | None = None
    category: str | None = None
    model: str | None = None
    model_version: str | None = None
    repro: list[ReproCase] = Field(default_factory=list)
    links: list[str] = Field(default_factory=list)
    observed_at: datetime | None = None
    raw: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_closing_notice(self) -> bool:
        """The sender says the harm stopped (resolved) or someone is on it (acknowledged)."""
        return self.status != "firing"
