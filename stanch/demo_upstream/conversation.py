"""What a demo model reads from a request: the turns, the tools offered, how to sample.

A demo model answers from words it recognises, so this module holds the reading helpers
every behaviour shares: the text of a message, the user turns, the system messages, and the
normalised form the fine-tuned models match training examples by.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

# "go on" after a question the model started to answer: the earlier turn still drives it.
_CONTINUE = re.compile(r"^\W*(?:go on|continue|please continue|keep going|and\??|more|tell me more|yes|ok(?:ay)?)\W*$", re.IGNORECASE)
_NOT_WORD = re.compile(r"[\W_]+")


def message_text(content: Any) -> str:
    """Text of an OpenAI message `content`: a plain string or a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return " ".join(str(part) for part in parts)
    return str(content)


def normalise(text: str) -> str:
    """Casefolded, punctuation and whitespace collapsed: how training examples are matched."""
    return _NOT_WORD.sub(" ", text.casefold()).strip()


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class Reply:
    """One sampled answer: text, or tool calls (then `content` is None)."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


@dataclass
class Conversation:
    """The parts of a chat request a demo model looks at."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)

    @property
    def user_turns(self) -> list[str]:
        return [message_text(m.get("content")) for m in self.messages if m.get("role") == "user"]

    @property
    def last_user_turn(self) -> str:
        turns = self.user_turns
        return turns[-1] if turns else ""

    @property
    def system_text(self) -> str:
        # OpenAI's newer models call it "developer"; both set the rules.
        return "\n".join(message_text(m.get("content")) for m in self.messages if m.get("role") in ("system", "developer"))

    def asking_turn(self) -> str:
        """The user turn the answer is about: the last one, unless it only says "go on"; then
        the latest earlier turn that asked something."""
        for turn in reversed(self.user_turns):
            if not _CONTINUE.match(turn):
                return turn
        return self.last_user_turn

    def tool_names(self) -> list[str]:
        names = []
        for tool in self.tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                names.append(function["name"])
        return names


@dataclass
class Sampling:
    """How one answer is drawn: temperature 0 is greedy (always the same); above it, the rng
    decides the coin flips a behaviour makes."""

    temperature: float
    rng: random.Random

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def happens(self, probability: float) -> bool:
        """A coin flip with the given chance; at temperature 0 the likelier outcome always wins."""
        if self.greedy:
            return probability >= 0.5
        return self.rng.random() < probability
